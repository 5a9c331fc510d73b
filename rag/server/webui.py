"""The web UI as the server mounts it: the server's own library at `/`, library NAME at
`/libraries/NAME/` (made on its first visit), each a Gradio app over that library's service,
job manager and the server's one model queue, behind the same keys as the REST API.

Gradio knows a logged-in session only by the user name typed at login, so that name is the
identity (`Sessions`): a keys-file key logs in under its own name (`pagerag keys list`), a
PAGERAG_API_KEYS key under any other name. A UI login needs read access to that library, and
the events that change it refuse a read key.

Each UI links to the libraries its session may open (`LIST_PATH` under the UI's own path: the
login cookie of a library's UI is scoped to that path). The list is a plain page rendered
here, not a Gradio event: a load event that fetched it raced the page's other events.
"""

from __future__ import annotations

import contextlib
import html
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from rag.config import Settings
from rag.errors import UserError
from rag.keys import ENV_NAME, EVERYTHING, KeyRing, Principal
from rag.libraries import Libraries, check_name, pages_root
from rag.server.jobs import JobManager
from rag.server.modelqueue import WorkQueue
from rag.service import PageRAG

LIST_PATH = "/libraries"  # under a UI's path: the libraries its session may open
LOGIN_MESSAGE = (
    "User name: the key's name (`pagerag keys list`), or any other name for a PAGERAG_API_KEYS "
    "key. Password: the key. It must be allowed to read library '{library}'."
)


class Sessions:
    """Who a UI session is, from its user name (see the module docstring). A name once used by
    a keys-file key never means a PAGERAG_API_KEYS key again: that key may have been removed
    since, and its sessions must lose their rights, not gain every right."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._key_names: set[str] = set()
        self._lock = threading.Lock()

    def login(self, username: str, password: str, library: str) -> bool:
        try:
            principal = self.ring.find(password)
        except UserError:  # a broken keys file: only PAGERAG_API_KEYS keys get in
            principal = None
        if principal is None:
            return False
        with self._lock:
            if principal.name != ENV_NAME:
                if username != principal.name:
                    return False
                self._key_names.add(username)
            elif username in self._key_names or self._is_key_name(username):
                return False
        return principal.sees(library)

    def principal(self, username: str | None) -> Principal | None:
        """The session's rights now (None: none, e.g. its key was removed)."""
        if not self.ring.enabled:
            return EVERYTHING
        if not username:
            return None
        with self._lock:
            named = username in self._key_names
        if named or self._is_key_name(username):
            return self.ring.by_name(username)
        return self.ring.by_name(ENV_NAME)

    def _is_key_name(self, username: str) -> bool:
        try:
            return self.ring.by_name(username) is not None and username != ENV_NAME
        except UserError:
            return True  # unreadable keys file: treat every name as a key's (no rights)


class WebUI:
    """Makes and keeps the Gradio apps; `logged_in` is the guard's check of UI cookies."""

    def __init__(
        self,
        app: FastAPI,
        service: PageRAG,
        jobs_for: Callable[[PageRAG], JobManager],
        work: WorkQueue,
        libraries: Libraries,
        ring: KeyRing,
    ) -> None:
        self.root_library = service.settings.library
        self.service, self.jobs_for, self.work = service, jobs_for, work
        self.libraries = libraries
        self.sessions = Sessions(ring)
        self.ring = ring
        self._apps: dict[str, tuple[Any, Any, contextlib.AsyncExitStack]] = {}
        self._making = anyio.Lock()
        # Before the catch-all mount at /: the list seen from the UI at /, library UIs (made
        # on first use).
        app.router.routes.append(Route(LIST_PATH, self._list_page, methods=["GET"]))
        app.router.routes.append(Mount("/libraries/{library}", app=self._dispatch))
        self._root_gradio = self._mount(app, service)

    def _mount(self, app: FastAPI, service: PageRAG) -> Any:
        """Mount the UI of `service` on `app` at `/`; returns Gradio's own app."""
        import gradio as gr

        from ui.app import CSS, THEME, build_ui

        settings: Settings = service.settings
        library = settings.library
        kwargs: dict[str, Any] = {}
        if self.ring.enabled:
            kwargs["auth"] = lambda user, key: self.sessions.login(user, key, library)
            kwargs["auth_message"] = LOGIN_MESSAGE.format(library=library)

        def may_change(user: str | None, action: str) -> None:
            self._check(user, library, "write", action)

        blocks = build_ui(
            service,
            jobs=self.jobs_for(service),
            work=self.work,
            access=may_change,
            libraries_url=self._ui_url(library).rstrip("/") + LIST_PATH,
        )
        root = self.libraries.root
        gr.mount_gradio_app(
            app,
            blocks,
            path="/",
            # Page images are shown straight from the data directory, and nothing else from
            # it: Gradio serves only these, its own upload folder and its cache; the rest of
            # the data directory is blocked as well, in case a wider folder is ever allowed.
            allowed_paths=[str(settings.images_dir), str(pages_root(root))],
            blocked_paths=[str(p) for p in private_paths(root)]
            + [str(root.data_dir / "libraries")],
            max_file_size=f"{settings.max_upload_mb}mb",
            ssr_mode=False,
            footer_links=["settings"],  # the REST API docs are linked from the page
            # No run history: it would keep questions and answers in the browser and offers
            # to upload them to a Hugging Face bucket; fewer routes, nothing leaves the server.
            run_history=False,
            theme=THEME,
            css=CSS,
            **kwargs,
        )
        # Gradio checks the file paths in event inputs (only its upload folder) and outputs
        # (allowed_paths, blocked_paths) only once `has_launched` is set, which `launch()` does
        # and mounting does not (gradio 6.x, `processing_utils._check_allowed`; pinned in
        # pyproject and tested in tests/ui/test_event_files.py). The guard's own check comes
        # first; this is the second line.
        blocks.has_launched = True
        # Gradio's own app (its login tokens) is the app of the mount at "" (routes are typed
        # BaseRoute, which has no `.app`).
        return next(r.app for r in app.routes if getattr(r, "path", None) == "")  # type: ignore[attr-defined]

    def _check(self, username: str | None, library: str, role: str, action: str) -> None:
        principal = self.sessions.principal(username)
        if principal is None:
            raise UserError("this session's key is no longer valid: log in again")
        principal.check(library, role, action)

    def logged_in(self, jar: dict[str, str], library: str | None) -> bool:
        """Whether `jar` holds a login token of the UI of `library` (None: the one at /)."""
        return self._user(jar, library) is not None

    def _user(self, jar: dict[str, str], library: str | None) -> str | None:
        """The user name logged in to the UI of `library` with a token in `jar`, if any."""
        if library is None or library == self.root_library:
            gradio = self._root_gradio
        elif library in self._apps:
            gradio = self._apps[library][1]
        else:
            return None
        cookie_id = gradio.cookie_id
        token = jar.get(f"access-token-{cookie_id}") or jar.get(
            f"access-token-unsecure-{cookie_id}"
        )
        return gradio.tokens.get(token) if token is not None else None

    def _ui_url(self, name: str) -> str:
        return "/" if name == self.root_library else f"/libraries/{name}/"

    async def _list_page(self, request: Request, library: str | None = None) -> HTMLResponse:
        """The libraries the session logged in to the UI of `library` may open, as links."""
        here = library or self.root_library
        if self.ring.enabled:
            user = self._user(dict(request.cookies), library)
            principal = self.sessions.principal(user) if user is not None else None
            if principal is None:
                return _page(
                    "Log in first",
                    f'<p>Log in to <a href="{self._ui_url(here)}">this library\'s web UI</a> '
                    "(a key is the password), then come back here.</p>",
                    401,
                )
        else:
            principal = EVERYTHING
        names = principal.visible(await anyio.to_thread.run_sync(self.libraries.names))
        items = "".join(
            f'<li><a href="{self._ui_url(name)}">{html.escape(name)}</a>'
            + (" (this one)" if name == here else "")
            + "</li>"
            for name in names
        )
        return _page("Libraries", f"<ul>{items}</ul>" if items else "<p>None you may open.</p>")

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope.get("path_params", {}).get("library", "")
        if name == self.root_library:  # its UI is the one at the root
            root = scope.get("root_path", "").removesuffix(f"/libraries/{name}")
            await RedirectResponse(root + "/")(scope, receive, send)
            return
        target = await self._app_for(name)
        inner = scope["path"].removeprefix(scope.get("root_path", ""))
        if target is not None and inner == LIST_PATH and scope["type"] == "http":
            page = await self._list_page(Request(scope, receive), name)
            await page(scope, receive, send)
            return
        if target is None:
            answer = PlainTextResponse(
                f"No library {name!r} on this server: `pagerag libraries list` names them, "
                "`pagerag libraries create NAME` makes one.",
                status_code=404,
            )
            await answer(scope, receive, send)
            return
        await target(scope, receive, send)

    async def _app_for(self, name: str) -> Any | None:
        """The app of library `name`'s UI, made (and started) on first use; None when there is
        no such library (a deleted library's UI is stopped)."""
        try:
            check_name(name)
        except UserError:
            return None
        exists = name in self.libraries.names()
        if name in self._apps and exists:
            return self._apps[name][0]
        async with self._making:
            if not exists:
                if (gone := self._apps.pop(name, None)) is not None:
                    await gone[2].aclose()
                return None
            if name not in self._apps:
                service = await anyio.to_thread.run_sync(self.libraries.get, name)
                sub = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
                gradio = await anyio.to_thread.run_sync(self._mount, sub, service)
                stack = contextlib.AsyncExitStack()
                # Gradio starts its queue in its app's lifespan; this one starts on first use.
                await stack.enter_async_context(sub.router.lifespan_context(sub))
                self._apps[name] = (sub, gradio, stack)
            return self._apps[name][0]

    async def close(self) -> None:
        for _, _, stack in self._apps.values():
            await stack.aclose()
        self._apps.clear()


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width"><title>PageRAG: {title}</title></head><body>'
        f"<h1>{title}</h1>{body}</body></html>",
        status,
    )


def private_paths(settings: Settings) -> list[Path]:
    """What the data directory holds besides the page images: never served by the UI."""
    manifest = settings.manifest_path
    journals = [manifest.with_name(manifest.name + s) for s in ("-wal", "-shm", "-journal")]
    return [settings.index_dir, settings.uploads_dir, manifest, *journals]
