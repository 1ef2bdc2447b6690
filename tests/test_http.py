"""The /metrics server (agent/base/http.py) is bounded: idle and slow clients cannot grow its threads, and a
scrape that arrives among them is still answered. Real sockets on the loopback."""
import http.client
import socket
import threading
import time

from agent.base.http import MAX_CONNECTIONS, MetricsServer


def serve(**kw) -> MetricsServer:
    server = MetricsServer("127.0.0.1", 0, lambda: b"vigil_up 1\n", lambda: (True, "ok"), **kw)
    server.start()
    return server


def scrape(port: int) -> tuple[list[tuple[int, bytes]], float]:
    """Two scrapes on one keep-alive connection, as Prometheus makes them."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = []
    for _ in range(2):
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        answers.append((resp.status, resp.read()))
    conn.close()
    return answers, time.monotonic() - start


def test_idle_and_slow_clients_do_not_grow_threads_and_a_scrape_still_answers():
    """500 slow clients held 508 threads before. Now: at most MAX_CONNECTIONS connection threads, and a
    scrape among 300 idle or half-sent connections answers at once (the oldest idle one is let go)."""
    server = serve()
    before = threading.active_count()
    clients = []
    try:
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", server.port))
            if i % 3 == 0:
                s.sendall(b"GET /metr")  # a request that never completes (slowloris)
            clients.append(s)
        time.sleep(0.5)
        assert threading.active_count() - before <= MAX_CONNECTIONS
        answers, took = scrape(server.port)
        assert answers == [(200, b"vigil_up 1\n")] * 2 and took < 2.0
        assert threading.active_count() - before <= MAX_CONNECTIONS
    finally:
        for s in clients:
            s.close()
        server.stop()


def test_an_idle_connection_is_closed_after_the_timeout():
    server = serve(idle_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.settimeout(5)
            start = time.monotonic()
            assert s.recv(1) == b""  # the server hung up on a client that sent nothing
            assert time.monotonic() - start < 3
    finally:
        server.stop()

