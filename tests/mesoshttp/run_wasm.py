"""Runs one wasm task on a Cairn master with mesoshttp, an unmodified Mesos v1 HTTP
scheduler library from PyPI. Prints each state it sees; exits 0 on TASK_FINISHED.

usage: run_wasm.py MASTER_HOST:PORT /abs/path/hello.wasm [PRINCIPAL SECRET]

With a principal and secret, mesoshttp puts them in its SUBSCRIBE (its
`set_credentials`). If the master refuses the subscription, it exits 2.
"""
import logging
import sys

from mesoshttp.client import MesosClient

TERMINAL = {"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR", "TASK_LOST", "TASK_DROPPED"}


def main():
    master, module = sys.argv[1], sys.argv[2]
    principal, secret = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else (None, None)
    logging.basicConfig(level=logging.ERROR)
    client = MesosClient(
        mesos_urls=["http://" + master], frameworkName="mesoshttp-wasm", frameworkUser="root"
    )
    if principal:
        client.set_credentials(principal, secret)
    seen = {"launched": False, "final": None}

    def offers(received):
        for offer in received:
            if seen["launched"]:
                offer.decline()
                continue
            agent_id = offer.get_offer()["agent_id"]
            task = {
                "task_id": {"value": "mesoshttp-hello"},
                "agent_id": agent_id,
                "name": "hello",
                "resources": [
                    {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                    {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}},
                ],
                "command": {
                    "uris": [{"value": "file://" + module}],
                    "value": "hello.wasm",
                    "shell": False,
                    "arguments": ["hello.wasm", "from", "mesoshttp"],
                },
                "container": {"type": "WASM"},
            }
            offer.accept([task])
            seen["launched"] = True

    def update(status_update):
        state = status_update["status"]["state"]
        print(state, flush=True)
        if state in TERMINAL:
            seen["final"] = state
            client.stop = True

    client.on(MesosClient.OFFERS, offers)
    client.on(MesosClient.UPDATE, update)
    # Returns once `stop` is set and the next event (a heartbeat at the latest) comes,
    # or at once with False if the subscription is refused.
    if not client.register():
        print("refused", flush=True)
        sys.exit(2)
    sys.exit(0 if seen["final"] == "TASK_FINISHED" else 1)


if __name__ == "__main__":
    main()
