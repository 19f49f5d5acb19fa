"""A robot's camera loop on rkstream.client: stream frames at 5 fps and, every few
seconds, ask what changed, without ever making the loop wait for the network.

    pip install opencv-python-headless
    python examples/camera_loop.py --source 0              # the first camera
    python examples/camera_loop.py --source clip.mp4       # a video file
    python examples/camera_loop.py                         # generated frames

Without a camera it draws its own frames (a square that moves and changes colour),
so it runs anywhere against a server with a vision encoder, for example the
stand-in: ``rkstream serve --standin --set vision.encoder=<an .onnx encoder>``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from concurrent.futures import Future

import cv2
import numpy as np
import numpy.typing as npt

from rkstream.client import Client, FrameAnswer, RkstreamClientError

Frame = npt.NDArray[np.uint8]


def camera_frames(source: str) -> Iterator[Frame] | None:
    """Frames from a camera index or a video file, or None if it does not open."""
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        return None

    def read() -> Iterator[Frame]:
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield np.asarray(frame, dtype=np.uint8)
        finally:
            capture.release()

    return read()


def generated_frames(width: int = 320, height: int = 240) -> Iterator[Frame]:
    """A grey room with a square that moves, and changes colour every 2 seconds."""
    started = time.monotonic()
    while True:
        t = time.monotonic() - started
        frame = np.full((height, width, 3), 90, dtype=np.uint8)
        x = int((width - 60) * (0.5 + 0.5 * np.sin(t)))
        colour = [(0, 0, 255), (0, 255, 0), (255, 0, 0)][int(t / 2) % 3]  # BGR
        cv2.rectangle(frame, (x, 90), (x + 60, 150), colour, thickness=-1)
        cv2.putText(frame, f"{t:5.1f}s", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (255, 255, 255), 1)
        yield frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8080", help="the rkstream server")
    parser.add_argument("--key", help="its API key (default: RKSTREAM_API_KEY)")
    parser.add_argument("--source", default="0", help="a camera index or a video file")
    parser.add_argument("--fps", type=float, default=5.0, help="frames sent a second")
    parser.add_argument("--ask-every", type=float, default=3.0, metavar="SECONDS")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="stop after this many seconds (0: run until Ctrl-C)")
    args = parser.parse_args()

    frames = camera_frames(args.source)
    # A camera delivers at its own rate (the helper sends 5 of them a second, the
    # newest); a file or drawn frames are paced here.
    paced = frames is None or not args.source.isdigit()
    if frames is None:
        print(f"no camera or video at {args.source!r}: using generated frames")
        frames = generated_frames()
    with Client(args.url, api_key=args.key) as client:
        camera = client.camera("front", max_fps=args.fps)
        question = "What is in front of the robot?"
        pending: Future[FrameAnswer] | None = None
        started = last_ask = time.monotonic()
        try:
            for frame in frames:
                now = time.monotonic()
                if args.duration and now - started > args.duration:
                    break
                camera.send(frame)  # never blocks: the newest frame wins
                if pending is not None and pending.done():
                    try:
                        answer = pending.result()
                        seq = answer.frame.seq if answer.frame else "?"
                        age = answer.frame.age_ms if answer.frame else None  # at its prefill
                        old = f", {age:.0f} ms old" if age is not None else ""
                        print(f"[{now - started:5.1f}s] frame {seq}{old}: {answer.text}",
                              flush=True)
                        question = ("Earlier you said: " + answer.text[:300] +
                                    "\nWhat changed since then?")
                    except RkstreamClientError as exc:  # e.g. the server restarted
                        print(f"[{now - started:5.1f}s] no answer: {exc.code}: {exc.message}")
                    pending = None
                if pending is None and now - last_ask >= args.ask_every:
                    pending = camera.submit(question, max_tokens=64)  # answered later
                    last_ask = now
                if paced:
                    time.sleep(max(0.0, 1.0 / args.fps - (time.monotonic() - now)))
        except KeyboardInterrupt:
            pass
        print(f"frames: {camera.given} given, {camera.sent} sent, {camera.dropped} dropped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
