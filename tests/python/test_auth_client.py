"""User auth with the official Python client (PyPI `convex`, built on the Rust crate
`convex` 0.10.4) against a real `nimbus serve`.

`client.set_auth(token)` with ES256 JWTs of a `customJwt` provider, and what
`ctx.auth.getUserIdentity()` then returns to one-shot queries and to a subscription;
`client.clear_auth()`; a token refused because it has expired; a token that expires
mid-session; and the answers to mutations that throw (a `ConvexError` with data, a plain
error).

Self-contained: it starts its own server (a temporary data directory, a free port), makes
its own token issuer (a P-256 key generated at run time; ES256 signing in pure Python below,
so nothing but the standard library and `convex` is needed), writes a tiny Convex project
(`convex/auth.config.js` whose provider's `jwks` is a `data:` URI of the public key, and a
`whoami` query, and an action that runs it) and pushes it with the official CLI of `examples/pos/node_modules`.

The client reaches the tenant by host name (`http://py-auth.localhost:<port>`): it drops URL
paths. When that name does not resolve, the test adds it to /etc/hosts (CI runs as root) or
fails saying so.

Settings (environment): NIMBUS_BIN (default `$CARGO_TARGET_DIR/release/nimbus`, with
CARGO_TARGET_DIR defaulting to ~/.cache/nimbus-target), NIMBUS_TEST_SERVE_ARGS (more
`nimbus serve` flags, split like a shell), NIMBUS_TEST_LOG (the server's
RUST_LOG, default `warn`).

Every blocking client call runs under a step timer (SIGALRM): the client checks for Python
signals every second while it blocks, so a hang fails the step instead of the run. Run it
through `scripts/python-tests.sh`, which also bounds the whole run.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

from convex import ConvexClient, ConvexError

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "examples/pos/node_modules/convex/bin/main.js"
TENANT = "py-auth"
ISSUER = "https://issuer.python-client.test"
APPLICATION_ID = "nimbus-python-client"
KID = "python-client-test-key"
STEP = 30.0  # seconds any one step may take
REFUSED_WATCH = 3.0  # seconds a query under a refused token is watched for an answer

WHOAMI_JS = """import { actionGeneric as action, anyApi, internalMutationGeneric as internalMutation, mutationGeneric as mutation, queryGeneric as query } from "convex/server";
import { ConvexError, v } from "convex/values";

/** The caller's identity, or null. `probe` only makes a query distinct from another. */
export const whoami = query({
  args: { probe: v.optional(v.float64()) },
  handler: async (ctx) => (await ctx.auth.getUserIdentity()) ?? null,
});

/** Fails with a ConvexError carrying `reason` and the caller's subject as its data. */
export const reject = mutation({
  args: { reason: v.string() },
  handler: async (ctx, { reason }) => {
    const identity = await ctx.auth.getUserIdentity();
    throw new ConvexError({ reason, subject: identity?.subject ?? null });
  },
});

/** The caller's subject as an action sees it, and as a query it runs sees it. */
export const whoamiViaAction = action({
  args: {},
  handler: async (ctx) => ({
    direct: (await ctx.auth.getUserIdentity())?.subject ?? null,
    viaQuery: (await ctx.runQuery(anyApi.whoami.whoami, {}))?.subject ?? null,
  }),
});

/** Schedules `remember` 200 ms later; the job runs with no user, whoever scheduled it. */
export const remindMe = mutation({
  args: { text: v.string() },
  handler: async (ctx, { text }) =>
    ctx.scheduler.runAfter(200, anyApi.whoami.remember, { text }),
});

export const remember = internalMutation({
  args: { text: v.string() },
  handler: async (ctx, { text }) => {
    const subject = (await ctx.auth.getUserIdentity())?.subject ?? null;
    await ctx.db.insert("reminders", { text, subject });
  },
});

export const reminders = query({
  args: {},
  handler: async (ctx) =>
    (await ctx.db.query("reminders").collect()).map(({ text, subject }) => ({ text, subject })),
});

/** Fails with a plain Error. */
export const crash = mutation({
  args: {},
  handler: async () => {
    throw new Error("a plain failure");
  },
});
"""

# ---------------------------------------------------------------------------------------
# ES256 (ECDSA over P-256 with SHA-256), enough to issue test tokens. The server verifies
# every signature, so a mistake here fails the test; it never passes one.

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
A = P - 3
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)


def _add(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        slope = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (slope * slope - x1 - x2) % P
    return (x3, (slope * (x1 - x3) - y1) % P)


def _mul(k, point):
    result = None
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """A token issuer with a fresh P-256 key."""

    def __init__(self) -> None:
        self.d = secrets.randbelow(N - 1) + 1
        self.x, self.y = _mul(self.d, G)
        assert (self.y * self.y - (self.x**3 + A * self.x + B)) % P == 0

    def jwks_data_uri(self) -> str:
        jwk = {
            "kty": "EC",
            "crv": "P-256",
            "use": "sig",
            "alg": "ES256",
            "kid": KID,
            "x": b64url(self.x.to_bytes(32, "big")),
            "y": b64url(self.y.to_bytes(32, "big")),
        }
        data = base64.b64encode(json.dumps({"keys": [jwk]}).encode()).decode()
        return f"data:application/json;base64,{data}"

    def _sign(self, message: bytes) -> bytes:
        z = int.from_bytes(hashlib.sha256(message).digest(), "big")
        while True:
            k = secrets.randbelow(N - 1) + 1
            r = _mul(k, G)[0] % N
            s = pow(k, -1, N) * (z + r * self.d) % N
            if r and s:
                s = min(s, N - s)  # low S: accepted by every verifier
                return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def token(self, subject: str, plan: str, expires_in: int) -> str:
        """A token for `subject`, expiring `expires_in` seconds from now (negative: in the
        past), with the custom claims `plan` and `org.role`."""
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "kid": KID}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": APPLICATION_ID,
            "iat": min(now, now + expires_in) - 10,
            "exp": now + expires_in,
            "plan": plan,
            "org": {"role": "member"},
        }
        encode = lambda obj: b64url(json.dumps(obj, separators=(",", ":")).encode())  # noqa: E731
        signing_input = f"{encode(header)}.{encode(claims)}"
        return f"{signing_input}.{b64url(self._sign(signing_input.encode()))}"


# ---------------------------------------------------------------------------------------
# Bounded steps.


class StepTimeout(Exception):
    pass


@contextlib.contextmanager
def step(what: str, seconds: float = STEP):
    """Fails with StepTimeout when the block takes longer than `seconds`."""

    def expired(_signum, _frame):
        raise StepTimeout(f"{what}: no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def next_change(sub, previous, what: str, seconds: float = STEP):
    """The subscription's next value that differs from `previous` (it yields a value at
    every Transition of the client, changed or not)."""
    with step(what, seconds):
        while True:
            value = next(sub)
            if value != previous:
                return value


def whoami(client: ConvexClient, probe: float | None, what: str, seconds: float = STEP):
    """`whoami` as a one-shot query; with a `probe`, a query distinct from the subscribed
    one, so the server runs it under the socket's current identity."""
    with step(what, seconds):
        return client.query("whoami:whoami", {} if probe is None else {"probe": probe})


def assert_identity(identity, subject: str, plan: str) -> None:
    assert isinstance(identity, dict), f"not an identity: {identity!r}"
    expected = {
        "tokenIdentifier": f"{ISSUER}|{subject}",
        "subject": subject,
        "issuer": ISSUER,
        "plan": plan,
        "org.role": "member",
    }
    got = {name: identity.get(name) for name in expected}
    assert got == expected, f"identity {identity!r}"


# ---------------------------------------------------------------------------------------
# The server and the project.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In the server's child process: killed when the test process dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass


def ensure_host_resolves(host: str) -> None:
    try:
        socket.getaddrinfo(host, 80)
        return
    except socket.gaierror:
        pass
    try:
        with open("/etc/hosts", "a") as hosts:
            hosts.write(f"127.0.0.1 {host}\n")
        socket.getaddrinfo(host, 80)
    except OSError as error:
        raise AssertionError(
            f"{host} does not resolve and /etc/hosts is not writable: "
            f"add `127.0.0.1 {host}` to it ({error})"
        ) from None


def http_json(method: str, url: str, key: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=STEP) as response:
        return json.loads(response.read())


def nimbus_bin() -> Path:
    if os.environ.get("NIMBUS_BIN"):
        return Path(os.environ["NIMBUS_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache/nimbus-target")
    return Path(target) / "release/nimbus"


class Server:
    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        binary = nimbus_bin()
        assert binary.exists(), f"{binary} is missing: build it (cargo build --release -p nimbus)"
        self.data = tempfile.mkdtemp(prefix="nimbus-py-auth-")
        self.port = free_port()
        self.admin_key = "py-test-" + secrets.token_hex(24)
        env = dict(os.environ, NIMBUS_ADMIN_KEY=self.admin_key)
        env["RUST_LOG"] = os.environ.get("NIMBUS_TEST_LOG", "warn")
        self.process = subprocess.Popen(
            [
                binary,
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                self.data,
                *extra_args,
                # Extra flags, e.g. the same tests with tenants stored in Postgres.
                *shlex.split(os.environ.get("NIMBUS_TEST_SERVE_ARGS", "")),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + STEP
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("nimbus did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=STEP)
        shutil.rmtree(self.data, ignore_errors=True)


def write_project(issuer: Issuer) -> Path:
    root = Path(tempfile.mkdtemp(prefix="nimbus-py-auth-project-"))
    (root / "convex").mkdir()
    (root / "node_modules").symlink_to(REPO / "examples/pos/node_modules")
    (root / "package.json").write_text(
        json.dumps(
            {
                "name": "nimbus-python-client-auth",
                "private": True,
                "type": "module",
                "dependencies": {"convex": "1.48.0"},
            }
        )
    )
    config = {
        "providers": [
            {
                "type": "customJwt",
                "issuer": ISSUER,
                "jwks": issuer.jwks_data_uri(),
                "algorithm": "ES256",
                "applicationID": APPLICATION_ID,
            }
        ]
    }
    (root / "convex/auth.config.js").write_text(f"export default {json.dumps(config, indent=2)};\n")
    (root / "convex/whoami.js").write_text(WHOAMI_JS)
    return root


def deploy(project: Path, url: str, admin_key: str) -> None:
    assert CLI.exists(), f"{CLI} is missing: run `npm ci` in examples/pos"
    env = dict(os.environ, CONVEX_SELF_HOSTED_URL=url, CONVEX_SELF_HOSTED_ADMIN_KEY=admin_key)
    env.pop("CONVEX_DEPLOYMENT", None)
    pushed = subprocess.run(
        ["node", str(CLI), "deploy", "--yes", "--typecheck", "disable"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert pushed.returncode == 0, f"convex deploy failed:\n{pushed.stdout}{pushed.stderr}"


# ---------------------------------------------------------------------------------------
# The tests.


class PythonClientAuth(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.issuer = Issuer()
        cls.project = write_project(cls.issuer)
        cls.server = Server()
        try:
            created = http_json(
                "POST",
                f"http://127.0.0.1:{cls.server.port}/admin/tenants",
                cls.server.admin_key,
                {"name": TENANT},
            )
            deploy(
                cls.project,
                f"http://127.0.0.1:{cls.server.port}/t/{TENANT}",
                created["adminKey"],
            )
            host = f"{TENANT}.localhost"
            ensure_host_resolves(host)
            cls.url = f"http://{host}:{cls.server.port}"
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        shutil.rmtree(cls.project, ignore_errors=True)

    def client(self) -> ConvexClient:
        with step("connecting"):
            return ConvexClient(self.url)

    def test_set_auth_and_clear_auth_with_one_shot_queries(self) -> None:
        client = self.client()
        self.assertIsNone(whoami(client, 1.0, "anonymous query"))
        client.set_auth(self.issuer.token("alice", "pro", 3600))
        assert_identity(whoami(client, 2.0, "alice's query"), "alice", "pro")
        client.set_auth(self.issuer.token("bob", "free", 3600))
        assert_identity(whoami(client, 3.0, "bob's query"), "bob", "free")
        client.clear_auth()
        self.assertIsNone(whoami(client, 4.0, "the query after clear_auth"))
        del client

    def test_an_action_and_the_query_it_runs_see_the_user(self) -> None:
        client = self.client()
        with step("an anonymous action", 10.0):
            self.assertEqual(
                client.action("whoami:whoamiViaAction", {}), {"direct": None, "viaQuery": None}
            )
        client.set_auth(self.issuer.token("carol", "pro", 3600))
        with step("carol's action", 10.0):
            self.assertEqual(
                client.action("whoami:whoamiViaAction", {}),
                {"direct": "carol", "viaQuery": "carol"},
            )
        del client

    def test_a_scheduled_mutation_runs_and_its_write_reaches_a_subscription(self) -> None:
        """`ctx.scheduler.runAfter` through this client: the job runs once, after the
        mutation that scheduled it, with no user identity, and a live query sees its write."""
        client = self.client()
        client.set_auth(self.issuer.token("dave", "pro", 3600))
        sub = client.subscribe("whoami:reminders", {})
        with step("the first result"):
            self.assertEqual(next(sub), [])
        with step("scheduling", 10.0):
            job_id = client.mutation("whoami:remindMe", {"text": "water the plants"})
        self.assertIsInstance(job_id, str)
        self.assertEqual(
            next_change(sub, [], "the scheduled job's write", 10.0),
            [{"text": "water the plants", "subject": None}],
        )
        del sub
        del client

    def test_failed_mutations_are_answered(self) -> None:
        """A mutation that throws gets its answer over the socket, with a ConvexError's data
        intact. (This client, built on the Rust crate, waited for ever for the answer to a
        failure with `errorData` until Nimbus sent the Transition the crate waits for.)"""
        client = self.client()
        client.set_auth(self.issuer.token("alice", "pro", 3600))
        with step("a mutation that throws a ConvexError", 10.0):
            with self.assertRaises(ConvexError) as caught:
                client.mutation("whoami:reject", {"reason": "out of stock"})
        self.assertEqual(caught.exception.data, {"reason": "out of stock", "subject": "alice"})
        with step("a mutation that throws a plain Error", 10.0):
            with self.assertRaises(Exception) as plain:
                client.mutation("whoami:crash", {})
        self.assertNotIsInstance(plain.exception, ConvexError)
        self.assertIn("a plain failure", str(plain.exception))
        # The client is still usable afterwards.
        assert_identity(whoami(client, 9.0, "a query after the failures"), "alice", "pro")
        del client

    def test_a_subscription_follows_the_identity(self) -> None:
        client = self.client()
        sub = client.subscribe("whoami:whoami", {})
        with step("the first result"):
            self.assertIsNone(next(sub))
        client.set_auth(self.issuer.token("alice", "pro", 3600))
        alice = next_change(sub, None, "alice's identity")
        assert_identity(alice, "alice", "pro")
        # The subscribed query as a one-shot: the client answers from the subscription.
        self.assertEqual(whoami(client, None, "whoami:whoami"), alice)
        client.set_auth(self.issuer.token("bob", "free", 3600))
        bob = next_change(sub, alice, "bob's identity")
        assert_identity(bob, "bob", "free")
        client.clear_auth()
        self.assertIsNone(next_change(sub, bob, "null after clear_auth"))
        sub.unsubscribe()
        del client

    def test_an_expired_token_is_refused(self) -> None:
        # The server answers the expired token's `Authenticate` with `AuthError` and closes
        # the socket (as Convex does). The client (the Rust crate `convex` 0.10.4 underneath)
        # reconnects with backoff and sends the same token again, for as long as no other
        # token is set. Nothing is raised or printed; no result reaches the client meanwhile:
        # the subscription yields nothing new (never null, as if anonymous, nor the previous
        # user) and queries stay unanswered.
        #
        # The client is not given a valid token afterwards: while its socket keeps failing,
        # the crate reads the caller's requests (`set_auth` included) only in the rare rounds
        # where a reconnect gets that far, under a backoff of up to 15 s, so a valid token
        # took from 1 s to over 100 s to be sent in measurements. A new client works at once.
        client = self.client()
        sub = client.subscribe("whoami:whoami", {})
        with step("the first result"):
            self.assertIsNone(next(sub))
        client.set_auth(self.issuer.token("carol", "pro", 3600))
        carol = next_change(sub, None, "carol's identity")
        assert_identity(carol, "carol", "pro")
        client.set_auth(self.issuer.token("carol", "expired", -3600))
        with self.assertRaises(StepTimeout):
            changed = next_change(sub, carol, "the subscription, refused", REFUSED_WATCH)
            self.fail(f"a result reached a client whose token was refused: {changed!r}")
        with self.assertRaises(StepTimeout):
            answer = whoami(client, 5.0, "a query under an expired token", REFUSED_WATCH)
            self.fail(f"a query was answered under a refused token: {answer!r}")
        other = self.client()
        other.set_auth(self.issuer.token("carol", "pro", 3600))
        assert_identity(whoami(other, 6.0, "another client's query"), "carol", "pro")
        # Not `sub.unsubscribe()`: after the interrupted wait it would subscribe again first,
        # and that request waits for the refused socket like any other.
        del sub, client, other

    def test_a_token_that_expires_mid_session(self) -> None:
        # Accepted within the server's 60 s clock skew, expired 5 s later. The server notices
        # on its keep-alive tick (every 5 s) and sends `AuthError` and a close; from then on
        # the client is refused as in `test_an_expired_token_is_refused`. Until the server
        # notices, queries are still answered as erin.
        client = self.client()
        client.set_auth(self.issuer.token("erin", "short-lived", -55))
        assert_identity(whoami(client, 7.0, "erin's query"), "erin", "short-lived")
        started = time.monotonic()
        probe = 8.0
        while True:
            self.assertLess(time.monotonic() - started, 30, "the expiry was never noticed")
            try:
                answer = whoami(client, probe, "a query", REFUSED_WATCH)
            except StepTimeout:
                break  # refused: no answer any more
            assert_identity(answer, "erin", "short-lived")
            probe += 1
            time.sleep(1)
        print(f"\n  the expiry was noticed {time.monotonic() - started:.1f} s after the first query")
        fresh = self.client()
        fresh.set_auth(self.issuer.token("erin", "refreshed", 3600))
        assert_identity(whoami(fresh, 100.0, "erin's query, refreshed"), "erin", "refreshed")
        del client, fresh

if __name__ == "__main__":
    unittest.main(verbosity=2)
