"""`GET /metrics` read by the official Prometheus client library's parser
(`prometheus_client.parser`), after calls from the official Convex Python client (over the
socket) and over HTTP: the counters and the latency histogram count exactly those calls, the
tenant's commit counter matches its `/admin/tenants/<t>/stats`, and past
`--metrics-max-tenants` the quietest tenants are summed under `tenant="_other"`.

Uses the server, project and token helpers of test_auth_client.py.
"""

from __future__ import annotations

import json
import unittest
import urllib.error
import urllib.request

from convex import ConvexClient, ConvexError
from prometheus_client.parser import text_string_to_metric_families

from test_auth_client import STEP, Issuer, Server, deploy, ensure_host_resolves, http_json, step, write_project

TENANT = "py-metrics"


def scrape(server: Server, key: str | None = None):
    """`(status, body text)` of `GET /metrics`."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=STEP) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict:
    """Every sample, keyed by (name, sorted labels), parsed by prometheus_client."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def call(server: Server, tenant: str, kind: str, path: str, args: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/t/{tenant}/api/{kind}",
        data=json.dumps({"path": path, "args": args}).encode(),
        method="POST",
    )
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=STEP) as response:
        return json.loads(response.read())


class Metrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.project = write_project(Issuer())
        cls.server = Server()
        try:
            created = http_json(
                "POST",
                f"http://127.0.0.1:{cls.server.port}/admin/tenants",
                cls.server.admin_key,
                {"name": TENANT},
            )
            deploy(cls.project, f"http://127.0.0.1:{cls.server.port}/t/{TENANT}", created["adminKey"])
            ensure_host_resolves(f"{TENANT}.localhost")
        except BaseException:
            cls.server.stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def test_counters_and_histograms_count_the_calls(self) -> None:
        for probe in range(5):
            answer = call(self.server, TENANT, "query", "whoami:whoami", {"probe": float(probe)})
            self.assertEqual(answer["status"], "success", answer)
        for _ in range(2):
            answer = call(self.server, TENANT, "mutation", "whoami:reject", {"reason": "no"})
            self.assertEqual(answer["status"], "error", answer)
        with step("connecting"):
            client = ConvexClient(f"http://{TENANT}.localhost:{self.server.port}")
        for _ in range(3):
            with step("a failing mutation over the socket"):
                with self.assertRaises(ConvexError):
                    client.mutation("whoami:reject", {"reason": "socket"})
        del client

        status, text = scrape(self.server, self.server.admin_key)
        self.assertEqual(status, 200, text)
        found = samples(text)

        def value(name: str, **labels) -> float:
            key = (name, tuple(sorted(labels.items())))
            self.assertIn(key, found, f"{key} is not in /metrics")
            return found[key]

        t = {"tenant": TENANT}
        self.assertEqual(value("nimbus_tenant_calls_total", **t, kind="query", outcome="success"), 5)
        self.assertEqual(value("nimbus_tenant_calls_total", **t, kind="mutation", outcome="failure"), 5)
        self.assertEqual(value("nimbus_tenant_calls_total", **t, kind="mutation", outcome="success"), 0)
        self.assertEqual(value("nimbus_tenant_calls_total", **t, kind="action", outcome="error"), 0)
        for kind, calls in (("query", 5), ("mutation", 5), ("action", 0)):
            labels = {**t, "kind": kind}
            self.assertEqual(value("nimbus_request_duration_seconds_count", **labels), calls)
            buckets = sorted(
                (float(dict(key[1])["le"]), v)
                for key, v in found.items()
                if key[0] == "nimbus_request_duration_seconds_bucket"
                and dict(key[1]).get("tenant") == TENANT
                and dict(key[1]).get("kind") == kind
            )
            self.assertEqual(len(buckets), 13, buckets)
            counts = [v for _, v in buckets]
            self.assertEqual(counts, sorted(counts), f"{kind} buckets are not cumulative")
            self.assertEqual(counts[-1], calls)
            sum_seconds = value("nimbus_request_duration_seconds_sum", **labels)
            self.assertEqual(sum_seconds > 0, calls > 0, sum_seconds)

        stats = http_json(
            "GET",
            f"http://127.0.0.1:{self.server.port}/admin/tenants/{TENANT}/stats",
            self.server.admin_key,
        )
        self.assertEqual(value("nimbus_tenant_commits_total", **t), stats["commits"])
        self.assertEqual(value("nimbus_tenant_commit_queue_capacity", **t), stats["commitQueueCapacity"])
        self.assertEqual(value("nimbus_tenant_rejected_total", **t, reason="inflight"), stats["rejectedCalls"])
        self.assertGreaterEqual(value("nimbus_active_tenants"), 1)
        self.assertGreater(value("nimbus_process_resident_memory_bytes"), 0)
        self.assertEqual(value("nimbus_metrics_tenants_folded"), 0)
        # The tenant ran code, so its runtime is cached on its home workers, with a heap.
        self.assertGreaterEqual(value("nimbus_js_cached_runtimes"), 1)
        self.assertGreater(value("nimbus_js_cached_runtime_bytes"), 10_000)
        self.assertEqual(value("nimbus_js_runtime_cache_evictions_total"), 0)

    def test_only_the_instance_admin_may_scrape(self) -> None:
        for key in (None, "wrong-key", self.server.admin_key[:-1]):
            status, text = scrape(self.server, key)
            self.assertEqual(status, 401, text)
            self.assertEqual(json.loads(text)["code"], "Unauthenticated", text)


class MetricsLabelBound(unittest.TestCase):
    def test_tenants_past_the_bound_are_summed_under_other(self) -> None:
        server = Server(("--metrics-max-tenants", "1"))
        try:
            for name in ("m-one", "m-two", "m-three"):
                http_json("POST", f"http://127.0.0.1:{server.port}/admin/tenants", server.admin_key, {"name": name})
            # Calls activate the tenants. A call to a function that does not exist is not
            # counted (it never ran), so all three tie at 0 calls and the first by name,
            # m-one, keeps its own series.
            for name, calls in (("m-one", 1), ("m-two", 3), ("m-three", 1)):
                for _ in range(calls):
                    call(server, name, "query", "missing:fn", {})
            status, text = scrape(server, server.admin_key)
            self.assertEqual(status, 200, text)
            found = samples(text)
            tenants = {
                dict(key[1])["tenant"] for key in found if key[0] == "nimbus_tenant_commits_total"
            }
            self.assertEqual(len(tenants), 2, tenants)
            self.assertEqual(tenants, {"m-one", "_other"})
            self.assertEqual(found[("nimbus_metrics_tenants_folded", ())], 2)
            self.assertEqual(found[("nimbus_active_tenants", ())], 3)
            # The folded tenants' capacities add up under `_other`.
            one = found[("nimbus_tenant_commit_queue_capacity", (("tenant", "m-one"),))]
            self.assertEqual(found[("nimbus_tenant_commit_queue_capacity", (("tenant", "_other"),))], 2 * one)
        finally:
            server.stop()


if __name__ == "__main__":
    unittest.main()
