"""Runs one wasm task on a Cairn master with pymesos, an unmodified Mesos v1 HTTP
scheduler library from PyPI. Prints each state it sees; exits 0 on TASK_FINISHED.

usage: run_wasm.py MASTER_HOST:PORT /abs/path/hello.wasm [PRINCIPAL SECRET]

With a principal and secret, pymesos authenticates with HTTP Basic. If the master
refuses the driver (pymesos aborts on any status but 200, 307 and 503), it exits 2.
"""
import logging
import sys
import threading
import time

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
    principal, secret = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else (None, None)
    logging.basicConfig(level=logging.WARNING)
    scheduler = WasmScheduler(module)
    framework = {"user": "root", "name": "pymesos-wasm", "hostname": "localhost"}
    driver = MesosSchedulerDriver(
        scheduler, framework, master, use_addict=True, principal=principal, secret=secret
    )
    driver.start()
    deadline = time.monotonic() + 60
    try:
        # pymesos marks the driver aborted when its connection thread gives up.
        while not scheduler.done.wait(0.1) and time.monotonic() < deadline:
            if driver.aborted:
                raise KeyboardInterrupt
    except (KeyboardInterrupt, RuntimeError) as e:
        # pymesos raises its connection thread's error in the main thread.
        print(f"refused: {e}", flush=True)
        sys.exit(2)
    finished = scheduler.done.is_set()
    driver.stop()
    driver.join()
    sys.exit(0 if finished and scheduler.final == "TASK_FINISHED" else 1)


if __name__ == "__main__":
    main()
