"""PDF output: a locked-down URL fetcher and WeasyPrint run in a subprocess.

The report's HTML is converted by WeasyPrint (Kozea, https://weasyprint.org) in a child process
(:mod:`auditor.report._pdf_worker`) with a wall-clock limit, so a pathological input cannot hang
an audit. The URL fetcher allows only ``data:`` URIs and ``file:`` URLs that resolve inside the
run directory; anything else (``http:``, ``file:///etc/passwd``, a symlink out of the run, a
missing file) is an error, never a silently blank figure.
"""

from __future__ import annotations

import base64
import math
import mimetypes
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auditor.errors import RenderError

__all__ = ["html_to_pdf", "make_url_fetcher", "resolve_resource"]

#: Exit status of the worker when it raised RenderError (message on stderr).
WORKER_RENDER_ERROR = 3


def _parse_data_uri(url: str) -> tuple[bytes, str]:
    """Decode ``data:[<mediatype>][;base64],<data>`` (RFC 2397)."""
    head, sep, payload = url[5:].partition(",")
    if not sep:
        raise RenderError(f"malformed data: URI (no comma): {url[:80]!r}")
    params = head.split(";")
    is_b64 = params[-1].strip().lower() == "base64"
    if is_b64:
        params = params[:-1]
    mime = params[0].strip() or "text/plain"
    try:
        if is_b64:
            body = base64.b64decode(urllib.parse.unquote_to_bytes(payload), validate=False)
        else:
            body = urllib.parse.unquote_to_bytes(payload)
    except ValueError as exc:
        raise RenderError(f"malformed data: URI: {url[:80]!r}: {exc}") from exc
    return body, mime


def resolve_resource(url: str, base_dir: Path) -> tuple[bytes, str]:
    """Return ``(bytes, mime type)`` for an allowed URL, or raise RenderError.

    Allowed: ``data:`` URIs, and ``file:`` URLs (no host other than ``localhost``) whose
    resolved path (symlinks followed) lies inside ``base_dir`` and is an existing file.
    """
    if not isinstance(url, str):
        raise TypeError(f"`url` must be a str, got {type(url).__name__}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _parse_data_uri(url)
    if scheme != "file":
        raise RenderError(
            f"report resource not allowed: {url[:200]!r} (only data: URIs and files inside "
            "the run directory)"
        )
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise RenderError(f"report resource not allowed (remote file host): {url[:200]!r}")
    root = Path(base_dir).resolve()
    target = Path(urllib.request.url2pathname(urllib.parse.unquote(parsed.path)))
    try:
        resolved = target.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise RenderError(f"report resource missing: {str(target)!r}") from exc
    if not resolved.is_relative_to(root):
        raise RenderError(
            f"report resource outside the run directory {str(root)!r}: {str(target)!r}"
        )
    if not resolved.is_file():
        raise RenderError(f"report resource is not a file: {str(target)!r}")
    mime = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
    return resolved.read_bytes(), mime


def make_url_fetcher(base_dir: Path, errors: list[str]) -> Any:
    """A WeasyPrint URL fetcher applying :func:`resolve_resource`; refusals go to ``errors``.

    Supports both WeasyPrint APIs: the ``URLFetcher`` class (WeasyPrint ≥ 68; errors are fatal
    and stop the rendering) and the older plain function returning a dict (errors are logged
    by WeasyPrint, so the caller must check ``errors`` after rendering).
    """
    try:
        from weasyprint.urls import URLFetcher, URLFetcherResponse
    except ImportError:  # WeasyPrint < 68
        URLFetcher = None  # noqa: N806

    if URLFetcher is None:

        def legacy_fetcher(url: str, timeout: float = 10, ssl_context: object = None) -> dict:
            try:
                body, mime = resolve_resource(url, base_dir)
            except RenderError as exc:
                errors.append(str(exc))
                raise
            return {"string": body, "mime_type": mime, "redirected_url": url}

        return legacy_fetcher

    class RunDirFetcher(URLFetcher):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(fail_on_errors=True, allowed_protocols=("data", "file"))

        def fetch(self, url: str, headers: object = None) -> Any:
            try:
                body, mime = resolve_resource(url, base_dir)
            except RenderError as exc:
                errors.append(str(exc))
                raise
            return URLFetcherResponse(url, body, {"Content-Type": mime})

    return RunDirFetcher()


def write_pdf_in_process(
    html_text: str,
    out_pdf: Path,
    base_dir: Path,
    *,
    variant: str | None = None,
    attachments: tuple[Path, ...] = (),
) -> None:
    """Convert ``html_text`` to ``out_pdf`` in this process (used by the worker).

    The PDF is tagged (``pdf_tags``: a structure tree for screen readers); ``variant`` is a
    WeasyPrint PDF variant (``"pdf/a-3b"``, ``"pdf/ua-1"``); ``attachments`` are files inside
    ``base_dir`` embedded in the PDF (PDF/A-3 allows this, e.g. summary.json).
    """
    import weasyprint

    errors: list[str] = []
    fetcher = make_url_fetcher(base_dir, errors)
    base_url = Path(base_dir).resolve().as_uri() + "/"
    root = Path(base_dir).resolve()
    files = []
    for att in attachments:
        path = Path(att).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise RenderError(f"PDF attachment must be a file inside the run: {str(att)!r}")
        files.append(
            weasyprint.Attachment(
                string=path.read_bytes(),
                name=path.name,
                description=f"{path.name} of this audit run",
                relationship="Data",
            )
        )
    try:
        doc = weasyprint.HTML(string=html_text, base_url=base_url, url_fetcher=fetcher)
        doc.write_pdf(
            target=str(out_pdf),
            pdf_variant=variant or None,
            pdf_tags=True,
            attachments=files or None,
        )
    except BaseException as exc:
        if errors:
            raise RenderError(errors[0]) from exc
        from auditor.audit.store import is_storage_error

        if is_storage_error(exc):  # a full disk: the caller names the path and free space
            raise
        if isinstance(exc, Exception):
            raise RenderError(f"WeasyPrint failed: {type(exc).__name__}: {exc}") from exc
        raise
    if errors:
        raise RenderError(errors[0])


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def html_to_pdf(
    html_text: str,
    out_pdf: Path,
    *,
    base_dir: Path,
    timeout_s: float = 600,
    runner: Callable[..., subprocess.CompletedProcess[bytes]] | None = None,
    variant: str | None = None,
    attachments: tuple[Path, ...] = (),
) -> Path:
    """Convert HTML to ``out_pdf`` atomically, in a subprocess limited to ``timeout_s`` seconds.

    Raises:
        RenderError: the worker refused a resource, failed, or ran past ``timeout_s``.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
        raise TypeError(f"`timeout_s` must be a number, got {timeout_s!r}")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"`timeout_s` must be a positive number of seconds, got {timeout_s!r}")
    from auditor.report.storage import report_writes

    out_pdf = Path(out_pdf)
    with report_writes(out_pdf):  # a full disk: RenderError naming the PDF and the free space
        return _html_to_pdf(html_text, out_pdf, base_dir, timeout_s, runner, variant, attachments)


def _html_to_pdf(
    html_text: str,
    out_pdf: Path,
    base_dir: Path,
    timeout_s: float,
    runner: Callable[..., subprocess.CompletedProcess[bytes]] | None,
    variant: str | None,
    attachments: tuple[Path, ...],
) -> Path:
    from auditor.report.storage import worker_write_error

    folder = out_pdf.parent
    fd_html, tmp_html = tempfile.mkstemp(prefix=".report-pdf.", suffix=".html", dir=folder)
    fd_pdf, tmp_pdf = tempfile.mkstemp(prefix=f".{out_pdf.name}.", suffix=".tmp", dir=folder)
    os.close(fd_pdf)
    try:
        with os.fdopen(fd_html, "w", encoding="utf-8") as fh:
            fh.write(html_text)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH", "")) if p
        )
        cmd = [
            sys.executable,
            "-m",
            "auditor.report._pdf_worker",
            "--html",
            tmp_html,
            "--out",
            tmp_pdf,
            "--base-dir",
            str(Path(base_dir).resolve()),
            "--parent-pid",  # the worker ends (and removes these temp files) if we die
            str(os.getpid()),
        ]
        if variant:
            cmd += ["--variant", variant]
        for att in attachments:
            cmd += ["--attach", str(Path(att).resolve())]
        run = runner or subprocess.run
        try:
            proc = run(cmd, timeout=timeout_s, capture_output=True, env=env, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RenderError(
                f"PDF rendering exceeded the time limit of {timeout_s:g} s (pdf_timeout_s)"
            ) from exc
        stderr = (proc.stderr or b"").decode("utf-8", "replace").strip()
        full = worker_write_error(proc.returncode, stderr, out_pdf)
        if full is not None:  # the disk filled up (or a file-size limit) under the worker
            raise full
        if proc.returncode == WORKER_RENDER_ERROR:
            raise RenderError(stderr.splitlines()[-1] if stderr else "PDF rendering failed")
        if proc.returncode != 0:
            raise RenderError(
                f"PDF worker failed (exit {proc.returncode}): {stderr[-2000:] or 'no output'}"
            )
        with open(tmp_pdf, "rb") as fh:
            if fh.read(5) != b"%PDF-":
                raise RenderError("PDF worker produced no PDF")
        os.chmod(tmp_pdf, 0o644)  # mkstemp makes 0600; a report is meant to be shared
        os.replace(tmp_pdf, out_pdf)
    finally:
        Path(tmp_html).unlink(missing_ok=True)
        Path(tmp_pdf).unlink(missing_ok=True)
    return out_pdf
