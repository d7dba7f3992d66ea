"""Branch-and-bound helpers as tasks of a Ray cluster (``--ray ADDRESS``), for one very hard instance.

The protocol is the forked helpers' (``bab/parallel.py``); only the transport differs.  The coordinator
listens on a TCP port of its node; each task connects back, proves it was started by this search (a
random token), receives the helper's search (the rule, network and objective, pickled by value with
Ray's cloudpickle; the replayer carries the model file) and runs ``helper_loop`` until the connection
closes.  Every node needs this package installed (``pip install '.[cluster]'``).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import socket
from multiprocessing.connection import Connection

from verifier.deadline import Deadline
from verifier.errors import VerifierError

log = logging.getLogger(__name__)

_CONNECT_WAIT = 60.0  # seconds the coordinator waits for its tasks to connect (Ray may start workers first)


def start_ray_helpers(address: str, search, workers: int, seed: int, deadline: Deadline
                      ) -> tuple[list[Connection], list]:
    """Start ``workers - 1`` helper tasks (0: one per CPU of the cluster, less the coordinator's) on the
    cluster at ``address``; their connections (those that connected in time) and task references."""
    try:
        import ray
        from ray import cloudpickle
    except ImportError:
        raise VerifierError("--ray needs Ray: pip install '.[cluster]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as e:  # Ray's own errors (ConnectionError, ...)
            raise VerifierError(f"cannot join the Ray cluster at {address}: {e}") from None
    count = (workers or int(ray.cluster_resources().get("CPU", 1))) - 1
    if count < 1:
        return [], []
    token = secrets.token_bytes(16)
    server = socket.create_server((ray.util.get_node_ip_address(), 0))
    server.settimeout(min(_CONNECT_WAIT, max(1.0, deadline.remaining())))
    payload = cloudpickle.dumps(search)
    task = ray.remote(num_cpus=1, max_retries=0)(_run)
    tasks = [task.remote(server.getsockname()[:2], token, payload, seed + k) for k in range(1, count + 1)]
    conns: list[Connection] = []
    try:
        while len(conns) < count:
            sock, _ = server.accept()
            sock.setblocking(True)
            conn = Connection(sock.detach())
            if conn.poll(10.0) and hmac.compare_digest(conn.recv_bytes(64), token):
                conns.append(conn)
            else:
                conn.close()
    except (TimeoutError, OSError) as e:
        log.warning("branch and bound: %d of %d Ray helpers connected (%s)", len(conns), count, e)
    finally:
        server.close()
    return conns, tasks


def cancel(tasks: list) -> None:
    """Stop the helper tasks (their connections are closed already)."""
    import ray

    for t in tasks:
        try:
            ray.cancel(t, force=True)
        except Exception:  # finished already, or the cluster is gone
            pass


def _run(address: tuple[str, int], token: bytes, payload: bytes, seed: int) -> int:
    """The task: connect back, then serve as a helper until the coordinator closes the connection."""
    import torch
    from ray import cloudpickle

    from verifier.bab.parallel import helper_loop

    torch.set_num_threads(1)
    conn = Connection(socket.create_connection(address).detach())
    conn.send_bytes(token)
    return helper_loop(conn, cloudpickle.loads(payload), seed)
