"""Check a static page in a real headless Chromium: every player is rendered and its audio loads and plays
through, every image loads, nothing is logged as an error; optionally take a screenshot of the whole page.

    python benchmarks/browser_check.py samples/listening/index.html
    python benchmarks/browser_check.py samples/listening/index.html --screenshot samples/listening/screenshot.png

Chromium runs headless with a fresh profile and no network (``--headless --no-sandbox --disable-gpu
--disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync``) and
is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``; no extra package). The page is
opened from its ``file://`` URL, and after its load event the check evaluates, inside the page, a script of its
own (the page has none):

* every ``<audio>`` of the page's source is in the rendered DOM, with ``controls`` and the same ``src``;
* every player's metadata loads (duration > 0, no media error), and a second audio element on the same file,
  ``preload="auto"``, reaches ``canplaythrough`` (the file decodes);
* every ``<img>`` has loaded (``naturalWidth`` > 0);
* Chromium's log has no error (a missing file, a blocked resource).

Then (``--screenshot``) the whole page, ``--width`` pixels wide and as tall as its content, is captured once
all players show their durations, and written atomically as a palette PNG.

Needs Chromium (Debian: ``apt-get install -y chromium``). Exit code 0 when every check passes, 1 when one fails,
2 for a user mistake (no such page, no Chromium).
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from listening_page import compact_png  # noqa: E402
from rvqcodec.fileio import atomic_write_bytes  # noqa: E402

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")
TIMEOUT_S = 90.0  # for the whole check
SCREENSHOT_COLOURS = 128


class BrowserCheckError(RuntimeError):
    """The page failed a check, or Chromium failed (the message says which, in one line)."""


@dataclass
class BrowserReport:
    """What the check found.

    Attributes:
        chromium: the browser's product and version (from the DevTools protocol).
        players_expected: ``<audio>`` elements in the page's source.
        players_rendered: ``<audio controls>`` elements in the rendered page with the source's ``src``.
        players: per player: ``src``, ``duration`` (s), ``metadata`` and ``playthrough`` (loaded), ``error``.
        images: per image: ``src``, ``width``, ``height`` (natural size; 0 if it did not load).
        log_errors: error entries of Chromium's log.
        page_size: width and height of the rendered page in CSS pixels.
        screenshot: the screenshot written, if any.
    """

    chromium: str
    players_expected: int
    players_rendered: int
    players: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    page_size: tuple[int, int] = (0, 0)
    screenshot: str | None = None

    def failures(self) -> list[str]:
        """One line per failed check (empty when the page passes)."""
        problems = []
        if self.players_expected == 0:
            problems.append("the page has no <audio> player")
        if self.players_rendered != self.players_expected:
            problems.append(f"{self.players_rendered} of the page's {self.players_expected} players rendered "
                            "with controls")
        bad = [p["src"] for p in self.players if not (p["metadata"] and p["playthrough"] and p["duration"] > 0)]
        if bad:
            problems.append(f"{len(bad)} audio file(s) did not load or decode: {', '.join(bad[:4])}")
        bad = [i["src"] for i in self.images if not i["width"]]
        if bad:
            problems.append(f"{len(bad)} image(s) did not load: {', '.join(bad[:4])}")
        if self.log_errors:
            problems.append(f"chromium logged {len(self.log_errors)} error(s): {self.log_errors[0]}")
        return problems

    def summary(self) -> str:
        ok = sum(1 for p in self.players if p["metadata"] and p["playthrough"] and p["duration"] > 0)
        text = (f"{self.chromium}: {self.players_rendered}/{self.players_expected} players rendered, "
                f"{ok}/{len(self.players)} audio files loaded and decoded, "
                f"{sum(1 for i in self.images if i['width'])}/{len(self.images)} images loaded, "
                f"{len(self.log_errors)} log errors, page {self.page_size[0]}x{self.page_size[1]} px")
        if self.screenshot:
            text += f", screenshot {self.screenshot}"
        return text


def find_chromium(explicit: str | None = None) -> str | None:
    """Path of a Chromium executable: ``explicit`` (a name on PATH or a path), else the first of
    :data:`CHROMIUM_NAMES` on PATH; None if there is none."""
    if explicit:
        return shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _AudioInSource(HTMLParser):
    """The ``src`` of every ``<audio>`` element of an HTML document."""

    def __init__(self):
        super().__init__()
        self.audio: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "audio":
            self.audio.append(dict(attrs).get("src") or "")


class DevTools:
    """A headless Chromium driven through the DevTools protocol on a pipe (NUL-terminated JSON messages on the
    child's file descriptors 3 (commands in) and 4 (replies and events out))."""

    def __init__(self, chromium: str, width: int, height: int, deadline: float):
        self.deadline = deadline
        self.profile = tempfile.TemporaryDirectory(prefix="rvq-chromium-profile-")
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: chromium's chatter can never block it
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # the child's ends, moved above 4 (close-on-exec) so that the dup2 onto 3 and 4 cannot clobber them
        child_in = fcntl.fcntl(commands_read, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(replies_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(commands_read)
        os.close(replies_write)

        def wire():  # in the child, before exec: dup2 leaves 3 and 4 inheritable, everything else is CLOEXEC
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        try:
            self.process = subprocess.Popen(
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile.name}",
                 f"--window-size={width},{height}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                preexec_fn=wire, close_fds=False)
        except OSError as exc:
            self.profile.cleanup()
            self._stderr.close()
            raise BrowserCheckError(f"cannot start chromium: {exc}") from None
        finally:
            os.close(child_in)
            os.close(child_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    # -------------------------------------------------------------------------------------- messages

    def _read_message(self) -> dict:
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise BrowserCheckError(f"chromium did not answer within {TIMEOUT_S:g} s")
            ready, _, _ = select.select([self._replies], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise BrowserCheckError(f"chromium exited (code {self.process.poll()}): {self._stderr_tail()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _stderr_tail(self) -> str:
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        lines = [line for line in lines if "alsa" not in line.lower()]
        return lines[-1] if lines else ""

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (events that arrive meanwhile go to :attr:`events`)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserCheckError(f"{method} failed: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        """The first event ``method`` (already received or next to come)."""
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read_message())

    def close(self) -> None:
        try:
            os.write(self._commands, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        except OSError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._commands, self._replies):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()
        self.profile.cleanup()


CHECK_SCRIPT = """
(async () => {
  const timeout = (ms, value) => new Promise(resolve => setTimeout(() => resolve(value), ms));
  const either = (target, ok, bad) => new Promise(resolve => {
    target.addEventListener(ok, () => resolve(true), {once: true});
    target.addEventListener(bad, () => resolve(false), {once: true});
  });
  if (document.readyState !== "complete") await either(window, "load", "error");
  const players = [...document.querySelectorAll("audio")];
  await Promise.all(players.map(a => (a.readyState >= 1 || a.error) ? true
                                     : Promise.race([either(a, "loadedmetadata", "error"), timeout(%(ms)d, false)])));
  const playthrough = await Promise.all(players.map(a => {
    const b = new Audio();
    b.preload = "auto";
    b.muted = true;
    const done = Promise.race([either(b, "canplaythrough", "error"), timeout(%(ms)d, false)]);
    b.src = a.getAttribute("src");
    b.load();
    return done;
  }));
  const images = [...document.images];
  await Promise.all(images.map(i => i.complete ? true
                                   : Promise.race([either(i, "load", "error"), timeout(%(ms)d, false)])));
  return {
    url: location.href,
    players: players.map((a, k) => ({src: a.getAttribute("src") || "", controls: a.controls,
                                     duration: Number.isFinite(a.duration) ? a.duration : 0,
                                     metadata: a.readyState >= 1 && !a.error, playthrough: playthrough[k],
                                     error: a.error ? a.error.code : null})),
    images: images.map(i => ({src: i.getAttribute("src") || "", width: i.naturalWidth, height: i.naturalHeight})),
    width: document.documentElement.scrollWidth,
    height: document.documentElement.scrollHeight,
  };
})()
""" % {"ms": 30000}


def _evaluate(devtools: DevTools, session: str, expression: str):
    result = devtools.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session)
    if "exceptionDetails" in result:
        details = result["exceptionDetails"]
        raise BrowserCheckError(f"the check script failed: {details.get('exception', {}).get('description') or details.get('text')}")
    return result["result"].get("value")


def _viewport(devtools: DevTools, session: str, width: int, height: int) -> None:
    devtools.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session)


def check_page(page: Path, chromium: str | None = None, screenshot_path: Path | None = None,
               width: int = 1400) -> BrowserReport:
    """Run the checks of the module docstring on ``page``; raise if one fails.

    Raises:
        FileNotFoundError: no such page, or no Chromium.
        BrowserCheckError: a check failed (the report's :meth:`BrowserReport.failures`, first one in the
            message), or Chromium did.
    """
    report = inspect_page(page, chromium, screenshot_path, width)
    problems = report.failures()
    if problems:
        raise BrowserCheckError("; ".join(problems))
    return report


def inspect_page(page: Path, chromium: str | None = None, screenshot_path: Path | None = None,
                 width: int = 1400) -> BrowserReport:
    """Open ``page`` in headless Chromium and report what it rendered and loaded (see the module docstring);
    the screenshot is written only if every check passed.

    Raises:
        FileNotFoundError: no such page, or no Chromium.
        BrowserCheckError: Chromium failed or did not answer in time.
    """
    page = Path(page)
    if not page.is_file():
        raise FileNotFoundError(f"page not found: {page}")
    browser = find_chromium(chromium)
    if browser is None:
        raise FileNotFoundError(f"chromium not found ({chromium or ', '.join(CHROMIUM_NAMES)}); "
                                "install: apt-get install -y chromium")
    parser = _AudioInSource()
    parser.feed(page.read_text(encoding="utf-8"))
    url = page.resolve().as_uri()
    devtools = DevTools(browser, width, 900, time.monotonic() + TIMEOUT_S)
    try:
        product = devtools.send("Browser.getVersion").get("product", Path(browser).name)
        target = devtools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = devtools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Log", "Runtime"):
            devtools.send(f"{domain}.enable", session=session)
        _viewport(devtools, session, width, 900)
        devtools.send("Page.navigate", {"url": url}, session)
        devtools.wait_event("Page.loadEventFired")
        found = _evaluate(devtools, session, CHECK_SCRIPT)
        if found["url"] != url:
            raise BrowserCheckError(f"chromium shows {found['url']}, not {url}")
        rendered = [p for p, src in zip(found["players"], parser.audio) if p["controls"] and p["src"] == src]
        report = BrowserReport(
            product, len(parser.audio), len(rendered) if len(found["players"]) == len(parser.audio) else 0,
            found["players"], found["images"],
            [e["params"]["entry"].get("text", "") + " " + e["params"]["entry"].get("url", "")
             for e in devtools.events if e.get("method") == "Log.entryAdded"
             and e["params"]["entry"].get("level") == "error"],
            (found["width"], found["height"]))
        if screenshot_path is not None and not report.failures():
            height = found["height"]
            _viewport(devtools, session, width, height)
            height = _evaluate(devtools, session, "document.documentElement.scrollHeight")
            _viewport(devtools, session, width, height)
            shot = devtools.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
            atomic_write_bytes(screenshot_path, compact_png(base64.b64decode(shot), SCREENSHOT_COLOURS), fsync=True)
            report.screenshot = f"{Path(screenshot_path).name} ({width}x{height} px)"
            report.page_size = (width, height)
    finally:
        devtools.close()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page", type=Path, help="the HTML page to check")
    p.add_argument("--screenshot", type=Path, metavar="PNG", default=None,
                   help="write a screenshot of the whole page here (only if every check passes)")
    p.add_argument("--width", type=int, default=1400, help="browser window width in pixels (default 1400)")
    p.add_argument("--chromium", metavar="PATH", default=None,
                   help=f"Chromium executable (default: the first of {', '.join(CHROMIUM_NAMES)} on PATH)")
    args = p.parse_args(argv)
    if args.width < 320:
        print(f"error: --width must be at least 320 pixels, got {args.width}", file=sys.stderr)
        return 2
    try:
        report = check_page(args.page, args.chromium, args.screenshot, args.width)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrowserCheckError as exc:
        print(f"browser check FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"browser check passed: {report.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
