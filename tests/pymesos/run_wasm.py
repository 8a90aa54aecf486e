"""Runs one wasm task on a Cairn master with pymesos, an unmodified Mesos v1 HTTP
scheduler library from PyPI. Prints each state it sees; exits 0 on TASK_FINISHED.

usage: run_wasm.py MASTER_HOST:PORT /abs/path/hello.wasm
"""
import logging
import sys
import threading

from pymesos import MesosSchedulerDriver, Scheduler

TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED"}


class WasmScheduler(Scheduler):
    def __init__(self, module):
        self.module = module
        self.launched = False
        self.final = None
        self.done = threading.Event()

    def resourceOffers(self, driver, offers):
        for offer in offers:
            if self.launched:
                driver.declineOffer(offer.id, {"refuse_seconds": 60})
                continue
            task = {
                "task_id": {"value": "pymesos-hello"},
                "agent_id": {"value": offer.agent_id.value},
                "name": "hello",
                "resources": [
                    {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                    {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}},
                ],
                "command": {
                    "uris": [{"value": "file://" + self.module}],
                    "value": "hello.wasm",
                    "shell": False,
                    "arguments": ["hello.wasm", "from", "pymesos"],
                },
                "container": {"type": "WASM"},
            }
            driver.launchTasks(offer.id, [task])
            self.launched = True

    def statusUpdate(self, driver, update):
        print(update["state"], flush=True)
        if update["state"] in TERMINAL:
            self.final = update["state"]
            self.done.set()


def main():
    master, module = sys.argv[1], sys.argv[2]
    logging.basicConfig(level=logging.WARNING)
    scheduler = WasmScheduler(module)
    framework = {"user": "root", "name": "pymesos-wasm", "hostname": "localhost"}
    driver = MesosSchedulerDriver(scheduler, framework, master, use_addict=True)
    driver.start()
    finished = scheduler.done.wait(60)
    driver.stop()
    driver.join()
    sys.exit(0 if finished and scheduler.final == "TASK_FINISHED" else 1)


if __name__ == "__main__":
    main()
