"""The key timeline page (GET / on the admin listener) in a real browser.

jwksd runs with a short schedule and --admin-listen; headless Chromium from
Debian (chromium, driven through chromium-driver and python3-selenium) opens
the page and the test checks:

- the Content-Security-Policy header is present and strict (no unsafe-*, no
  wildcard), its hashes are those of the page's one inline script and one
  inline style, and the page has no inline handler or style attribute;
- one lane per key of /keys.json, each with the state /keys.json reports,
  and the "next change" line names the next scheduled changes;
- after `jwksd keys rotate` the new key's lane appears without a reload (a
  JavaScript marker set after the load is still there);
- the console has no error and no CSP violation (and, to show that both are
  watched, a violation made on purpose afterwards is caught by both);
- when /keys.json cannot be fetched (the server stopped) an error line shows.

A screenshot is written to $JWKS_TIMELINE_SCREENSHOT (CTest: timeline.png in
the build tree's tests directory) and its path printed.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path

from harness import (
    LOOPBACK, JwksdTestCase, can_connect, free_port, http_request,
)

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as exc:  # reported by the test, not hidden as a skip
    webdriver = None
    SELENIUM_MISSING = str(exc)

CHROMIUM = os.environ.get("JWKS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("JWKS_CHROMEDRIVER", "/usr/bin/chromedriver")
NEEDS = "chromium chromium-driver python3-selenium (scripts/dev test installs them)"

# A key is published 5 minutes and a rotation takes effect 10 s after it
# is asked for (--jwks-max-age + --margin): the states change when the test
# asks, and 10 s after the rotation; jwksd makes a successor by itself only
# 70 s before the first key retires (220 s after the start), when the test
# has long finished its rotation.
SCHEDULE = ("--key-ttl", "300", "--token-ttl", "5", "--jwks-max-age", "5",
            "--margin", "5")
ALGS = ("--alg", "RS256,ES256")

WAIT = 30.0          # for the page to show something (a loaded machine)
REFRESH_WAIT = 20.0  # for a change to reach the page (it polls every 3 s)

# Installed before any script of the page runs (DevTools, not subject to the
# page's CSP): every securitypolicyviolation event is kept.
VIOLATION_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""

LANES_JS = """
return [...document.querySelectorAll("#timeline g.lane")].map(
  (g) => [g.getAttribute("data-kid"), g.getAttribute("data-state")]);
"""

DURATION_RE = re.compile(r"(?:(\d+)d (\d+)h|(\d+)h (\d+)m|(\d+)m (\d+)s|(\d+)s)")
NEXT_RE = re.compile(r"next change in (" + DURATION_RE.pattern + r") \((.+)\)")


def sha256_source(text):
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def csp_directives(value):
    """{directive: [sources]} of a Content-Security-Policy header."""
    out = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


def duration_seconds(text):
    """(seconds, granularity) of the page's "3m 12s" style durations."""
    m = DURATION_RE.fullmatch(text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    g = [int(x) if x else 0 for x in m.groups()]
    if m.group(1):
        return g[0] * 86400 + g[1] * 3600, 3600
    if m.group(3):
        return g[2] * 3600 + g[3] * 60, 60
    if m.group(5):
        return g[4] * 60 + g[5], 1
    return g[6], 1


def expected_next(keys, now):
    """(time, [what]) of the next scheduled change after now, as the page
    words it: activations, retirements and expiries of keys not revoked or
    expired."""
    events = []
    for k in keys:
        if "revoked_at" in k or k["state"] in ("revoked", "expired"):
            continue
        for field, what in (("activate_at", "starts signing"),
                            ("retire_at", "stops signing"),
                            ("exp", "leaves the JWKS")):
            t = k[field]
            if 0 < t < 10**11 and t > now:
                events.append((t, f"key {k['kid']} {what}"))
    if not events:
        return None, []
    first = min(t for t, _ in events)
    return first, sorted(w for t, w in events if t == first)


class TimelinePageTest(JwksdTestCase):

    def setUp(self):
        super().setUp()
        if webdriver is None:
            self.fail(f"python3-selenium is missing ({SELENIUM_MISSING}): install {NEEDS}")
        for path in (CHROMIUM, CHROMEDRIVER):
            if not os.access(path, os.X_OK):
                self.fail(f"{path} is missing: install {NEEDS}")

    # -- the server

    def start_with_admin(self, *args):
        """jwksd with --admin-listen on another free port: (server, admin port)."""
        admin = free_port()
        server = self.start_server(*SCHEDULE, *ALGS, "--admin-listen",
                                   f"{LOOPBACK}:{admin}", *args)
        deadline = time.monotonic() + WAIT
        while not can_connect(admin):
            if time.monotonic() > deadline or not server.running:
                self.failure(f"the admin listener on port {admin} does not accept connections")
            time.sleep(0.05)
        # The first request waits for the first keys.
        self.post_auth(server)
        return server, admin

    def admin_get(self, admin, path):
        resp = http_request(admin, "GET", path)
        self.assertEqual(resp.status, 200, f"GET {path} on the admin listener: {resp.describe()}")
        return resp

    def keys_json(self, admin):
        resp = self.admin_get(admin, "/keys.json")
        data = resp.json()
        self.assertIsInstance(data, list, resp.describe())
        return data

    # -- the browser

    def browser(self):
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--window-size=1400,1000",
                    f"--user-data-dir={self.tmp / 'chromium'}"):
            opts.add_argument(arg)
        if os.geteuid() == 0:
            opts.add_argument("--no-sandbox")  # Chromium refuses root otherwise
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.addCleanup(driver.quit)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                               {"source": VIOLATION_WATCH})
        return driver

    def wait_for_page(self, driver, what, predicate, timeout=WAIT):
        try:
            return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
                lambda d: predicate(d))
        except TimeoutException:
            self.failure(f"the page did not show {what} within {timeout} s; "
                         f"page text: {driver.find_element('tag name', 'body').text[:2000]!r}")

    def updates(self, driver):
        return int(driver.execute_script(
            "return Number(document.documentElement.dataset.updates || 0)"))

    def consistent_view(self, driver, admin):
        """The page's lanes and next-change line checked against /keys.json.

        /keys.json is read (A), the page refreshes twice (its data is then
        from after A), the page is read, /keys.json is read again (B). When
        A and B are equal, the page's data (served between them) is that
        too. Returns (keys, lanes)."""
        deadline = time.monotonic() + 4 * REFRESH_WAIT
        attempts = []
        while time.monotonic() < deadline:
            before = self.keys_json(admin)
            seen = self.updates(driver)
            self.wait_for_page(driver, "two refreshes from /keys.json",
                          lambda d: self.updates(d) >= seen + 2, REFRESH_WAIT)
            lanes = driver.execute_script(LANES_JS)
            next_text = driver.find_element("id", "next").text
            read_at = time.time()
            resp = self.admin_get(admin, "/keys.json")
            after = resp.json()
            if before != after:
                attempts.append("the keys changed while the page was read")
                continue
            want = {str(k["kid"]): k["state"] for k in after}
            self.assertEqual(len(lanes), len({kid for kid, _ in lanes}),
                             f"one lane per key: {lanes}")
            self.assertEqual(dict(lanes), want,
                             f"the lanes (kid: state) against /keys.json {after}")
            # The next change, unless one fell due while the page was read.
            at, what = expected_next(after, read_at)
            if at is not None and at - read_at < 3:
                attempts.append(f"a change was due at {at} (read at {read_at:.1f})")
                continue
            if at is None:
                self.assertEqual(next_text, "no scheduled change ahead")
            else:
                m = NEXT_RE.fullmatch(next_text)
                self.assertIsNotNone(m, f"next-change line {next_text!r}")
                self.assertEqual(sorted(m.group(len(m.groups())).split(", ")), what,
                                 f"{next_text!r} for the keys {after}")
                left, unit = duration_seconds(m.group(1))
                self.assertLessEqual(abs(left - (at - read_at)), unit + 4,
                                     f"{next_text!r}: the change is at {at}, "
                                     f"the page was read at {read_at:.1f}")
            return after, lanes
        self.failure(f"no stable view of the keys: {attempts}")

    # -- the tests

    def test_page_header_and_markup(self):
        _, admin = self.start_with_admin()
        resp = self.admin_get(admin, "/")
        ctype = resp.header("Content-Type") or ""
        self.assertEqual(ctype.split(";")[0].strip().lower(), "text/html", resp.describe())
        page = resp.body.decode("utf-8")
        csp = resp.header("Content-Security-Policy")
        self.assertIsNotNone(csp, f"no Content-Security-Policy: {resp.describe()}")
        self.assertNotIn("unsafe", csp.lower(), csp)
        self.assertNotIn("*", csp, csp)
        d = csp_directives(csp)
        self.assertEqual(d.get("default-src"), ["'none'"], csp)
        for name in ("base-uri", "form-action", "frame-ancestors"):
            self.assertEqual(d.get(name), ["'none'"], csp)
        self.assertEqual(d.get("connect-src"), ["'self'"], csp)

        # Exactly one inline script and one inline style, without
        # attributes, and the policy allows those (by hash) and nothing else.
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.S | re.I)
        styles = re.findall(r"<style\b([^>]*)>(.*?)</style>", page, re.S | re.I)
        self.assertEqual([attrs for attrs, _ in scripts], [""], "one <script>, no src")
        self.assertEqual([attrs for attrs, _ in styles], [""], "one <style>")
        self.assertEqual(d.get("script-src"), [sha256_source(scripts[0][1])], csp)
        self.assertEqual(d.get("style-src"), [sha256_source(styles[0][1])], csp)
        markup = re.sub(r"<(script|style)>.*?</\1>", "", page, flags=re.S)
        self.assertIsNone(re.search(r"\son[a-z]+\s*=", markup, re.I), "inline handler")
        self.assertIsNone(re.search(r"\sstyle\s*=", markup, re.I), "style attribute")
        self.assertIsNone(re.search(r"\b(src|href)\s*=\s*\"(?!data:)", markup, re.I),
                          "an external asset")
        self.assertNotRegex(scripts[0][1], r"\beval\(|new Function|innerHTML|outerHTML"
                                           r"|insertAdjacentHTML|document\.write")

    def test_timeline_in_chromium(self):
        server, admin = self.start_with_admin()
        # A revoked key for the page to show: the ES256 one that signs.
        es = [k for k in self.keys_json(admin)
              if k["alg"] == "ES256" and k["state"] == "active"]
        self.assertEqual(len(es), 1, self.keys_json(admin))
        self.keys_ok("revoke", str(es[0]["kid"]), db=server.db)

        driver = self.browser()
        driver.get(f"http://{LOOPBACK}:{admin}/")
        self.wait_for_page(driver, "data from /keys.json", lambda d: self.updates(d) >= 1)
        marker = secrets.token_hex(8)
        driver.execute_script("window.__timelineMarker = arguments[0];", marker)

        keys, _ = self.consistent_view(driver, admin)
        states = {k["state"] for k in keys}
        self.assertLessEqual({"active", "expired", "revoked"}, states, keys)

        # A rotation through the CLI: the new key's lane appears, no reload.
        res = self.keys_ok("rotate", *SCHEDULE, db=server.db)
        m = re.search(r"\bkey (\d+) published\b", res.stdout + res.stderr)
        self.assertIsNotNone(m, f"no new kid in the output: {res.describe()}")
        new_kid = m.group(1)
        self.wait_for_page(driver, f"a lane for key {new_kid}",
                      lambda d: d.execute_script(
                          "return document.querySelector("
                          "'#timeline g.lane[data-kid=\"' + arguments[0] + '\"]') !== null",
                          new_kid), REFRESH_WAIT)
        self.assertEqual(driver.execute_script("return window.__timelineMarker;"), marker,
                         "the page was reloaded (the marker set after the load is gone)")
        self.screenshot(driver)  # while the new key still waits to sign, mostly
        keys, lanes = self.consistent_view(driver, admin)
        self.assertIn(new_kid, dict(lanes), lanes)
        self.assertEqual(driver.execute_script("return window.__timelineMarker;"), marker)
        self.assertGreater(len(driver.find_elements("css selector", "#timeline rect.bar.sign")), 0,
                           "no signing bar drawn")
        self.assertFalse(driver.find_element("id", "error").is_displayed(),
                         driver.find_element("id", "error").text)

        # No error and no CSP violation in the console. The probe shows that
        # the console is really read.
        driver.execute_script("console.error('timeline-test-probe')")
        logs = driver.get_log("browser")
        self.assertTrue(any("timeline-test-probe" in e["message"] for e in logs),
                        f"the browser console is not collected: {logs}")
        bad = [e for e in logs if "timeline-test-probe" not in e["message"]
               and (e["level"] == "SEVERE" or "Content Security Policy" in e["message"])]
        self.assertEqual(bad, [], "console errors or CSP reports")
        self.assertEqual(driver.execute_script("return window.__cspViolations;"), [],
                         "securitypolicyviolation events")

        # The policy is enforced: a style attribute is refused and reported.
        driver.execute_script("document.body.setAttribute('style', 'color: red')")
        self.wait_for_page(driver, "the violation of a style attribute",
                      lambda d: d.execute_script("return window.__cspViolations.length") > 0)
        self.assertNotEqual(driver.execute_script(
            "return getComputedStyle(document.body).color"), "rgb(255, 0, 0)",
            "an inline style attribute was applied")

        # The server goes away: the page says so and keeps the last data.
        self.stop_server(server)
        self.wait_for_page(driver, "the error line",
                      lambda d: d.find_element("id", "error").is_displayed(), REFRESH_WAIT)
        text = driver.find_element("id", "error").text
        self.assertTrue(text.startswith("Cannot load /keys.json"), text)
        self.assertEqual(len(driver.execute_script(LANES_JS)), len(keys))

    def screenshot(self, driver):
        path = Path(os.environ.get("JWKS_TIMELINE_SCREENSHOT")
                    or Path(tempfile.gettempdir()) / "jwksd-timeline.png")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, max(1000, int(height) + 140))
        time.sleep(0.5)  # let the page redraw at the new size (not asserted)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.assertTrue(driver.save_screenshot(str(path)), f"screenshot to {path}")
        self.assertEqual(path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n", path)
        print(f"\ntimeline screenshot: {path}", flush=True)


if __name__ == "__main__":
    import unittest
    unittest.main()
