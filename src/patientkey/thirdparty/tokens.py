"""The third party's OAuth state: pending CIBA requests and the access tokens it holds.

Access tokens are bearer secrets: whoever holds one can use the grant behind it until it
expires. So they are kept in one file, mode 0600 from its first byte, replaced
atomically (:func:`patientkey.fsutil.write_private`), never logged, and shown only
redacted (:meth:`~patientkey.thirdparty.oauth.TokenSet.redacted`). A pending request's
``auth_req_id`` is kept there too: it is the handle ``patientkey thirdparty token``
polls with.

The file (JSON, ``"version": 1``)::

    {"version": 1,
     "pending": [{"auth_req_id", "user_id", "binding_message", "requested",
                  "created_at", "expires_at", "interval", "last_polled_at"}],
     "tokens":  [{"access_token", "token_type", "user_id", "grant_id",
                  "obtained_at", "expires_at", "authorization_details"}]}

One token per grant: a new token for a grant replaces the one held. Every
read-modify-write holds an exclusive ``flock`` on a lock file beside it, so two
commands run at once never lose each other's tokens.

:func:`choose_token` is the pure rule the core applies before a dispense: the
freshest live token of that patient whose granted ``authorization_details`` allow
``use`` on the prescription; without one, :class:`NoAccessToken` says what to run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from patientkey.authz.errors import OAuthError
from patientkey.authz.rar import Action, RecordRef, dump_details, parse_authorization_details
from patientkey.errors import ConfigError, NotFound, Unauthenticated
from patientkey.fsutil import write_private
from patientkey.thirdparty.oauth import BackchannelTicket, TokenSet

__all__ = [
    "FILE_VERSION",
    "MemoryTokenStore",
    "NoAccessToken",
    "TokenFile",
    "TokenSource",
    "TokenStore",
    "choose_token",
]

FILE_VERSION: Final = 1


class NoAccessToken(Unauthenticated):
    """No live access token covers what the third party is about to do."""

    problem = "thirdparty-no-access-token"
    title = "No access token for this record"


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def choose_token(
    tokens: Iterable[TokenSet],
    *,
    user_id: str,
    action: Action,
    record: RecordRef,
    now: float,
    purpose: str = "pharmacy_dispense",
) -> TokenSet:
    """The live token of ``user_id`` allowing ``action`` on ``record`` that lasts
    longest; NoAccessToken, telling the operator what to run, if there is none."""
    covering = [t for t in tokens if t.user_id == user_id and t.allows(action, record)]
    live = [t for t in covering if t.usable(now)]
    if live:
        return max(live, key=lambda t: t.expires_at)
    command = (
        f"patientkey thirdparty authorize --user {user_id} --purpose {purpose} "
        f"--record {record.his_id}:{record.p_id}"
    )
    if covering:
        latest = max(t.expires_at for t in covering)
        raise NoAccessToken(
            f"the access token for {record.his_id}/{record.p_id} expired at {_when(latest)}; "
            f"ask the patient again: run `{command}`"
        )
    raise NoAccessToken(
        f"no access token lets this party {action} {record.his_id}/{record.p_id} of "
        f"{user_id}: ask the patient first: run `{command}`"
    )


class TokenSource(Protocol):
    """What the core needs: the tokens held for a patient."""

    def tokens_for(self, user_id: str) -> Sequence[TokenSet]: ...


class TokenStore(TokenSource, Protocol):
    """The tokens and pending requests, as the CLI manages them."""

    def tokens(self) -> list[TokenSet]: ...

    def put_token(self, token: TokenSet) -> None:
        """Keep ``token``, replacing the one held for its grant."""
        ...

    def forget_token(self, ref: str) -> TokenSet:
        """Drop the token named ``ref`` (:attr:`TokenSet.ref`); NotFound if none."""
        ...

    def pending(self) -> list[BackchannelTicket]: ...

    def redeem(self, auth_req_id: str, token: TokenSet) -> None:
        """Keep ``token`` and drop the pending request it answered, at once."""
        ...

    def get_pending(self, auth_req_id: str) -> BackchannelTicket:
        """The pending request with this handle; NotFound if none."""
        ...

    def put_pending(self, ticket: BackchannelTicket) -> None: ...

    def forget_pending(self, auth_req_id: str) -> None: ...


# ── the state, shared by both stores ───────────────────────────────────────────────


@dataclass
class _State:
    pending: dict[str, BackchannelTicket] = field(default_factory=dict)
    tokens: dict[str, TokenSet] = field(default_factory=dict)

    def copy(self) -> _State:
        return _State(dict(self.pending), dict(self.tokens))

    def put_token(self, token: TokenSet) -> None:
        self.tokens[token.ref] = token

    def forget_token(self, ref: str) -> TokenSet:
        try:
            return self.tokens.pop(ref)
        except KeyError:
            raise NotFound(f"no token {ref!r} is held") from None

    def get_pending(self, auth_req_id: str) -> BackchannelTicket:
        try:
            return self.pending[auth_req_id]
        except KeyError:
            raise NotFound("no such pending authorization request") from None


class _Stored(ABC):
    """:class:`TokenStore` over a whole :class:`_State` read, or updated under a lock.

    An update is kept only when the operation succeeded (``forget_token`` of an unknown
    ref changes nothing), so the file and its in-memory twin behave alike by construction.
    """

    @abstractmethod
    def _read(self) -> _State: ...

    @abstractmethod
    def _update(self) -> contextlib.AbstractContextManager[_State]: ...

    def tokens_for(self, user_id: str) -> list[TokenSet]:
        return [t for t in self.tokens() if t.user_id == user_id]

    def tokens(self) -> list[TokenSet]:
        return list(self._read().tokens.values())

    def put_token(self, token: TokenSet) -> None:
        with self._update() as state:
            state.put_token(token)

    def forget_token(self, ref: str) -> TokenSet:
        with self._update() as state:
            return state.forget_token(ref)

    def pending(self) -> list[BackchannelTicket]:
        return list(self._read().pending.values())

    def redeem(self, auth_req_id: str, token: TokenSet) -> None:
        with self._update() as state:
            state.pending.pop(auth_req_id, None)
            state.put_token(token)

    def get_pending(self, auth_req_id: str) -> BackchannelTicket:
        return self._read().get_pending(auth_req_id)

    def put_pending(self, ticket: BackchannelTicket) -> None:
        with self._update() as state:
            state.pending[ticket.auth_req_id] = ticket

    def forget_pending(self, auth_req_id: str) -> None:
        with self._update() as state:
            state.pending.pop(auth_req_id, None)


class MemoryTokenStore(_Stored):
    """The in-memory twin of :class:`TokenFile` (tests, an embedded demo)."""

    def __init__(self, tokens: Iterable[TokenSet] = ()) -> None:
        self._state = _State()
        self._lock = threading.Lock()
        for token in tokens:
            self._state.put_token(token)

    def _read(self) -> _State:
        with self._lock:
            return self._state.copy()

    @contextlib.contextmanager
    def _update(self) -> Iterator[_State]:
        with self._lock:
            state = self._state.copy()
            yield state
            self._state = state


# ── the file ─────────────────────────────────────────────────────────────────────


def _ticket_json(ticket: BackchannelTicket) -> dict[str, Any]:
    return {
        "auth_req_id": ticket.auth_req_id,
        "user_id": ticket.user_id,
        "binding_message": ticket.binding_message,
        "requested": dump_details(ticket.requested),
        "created_at": ticket.created_at,
        "expires_at": ticket.expires_at,
        "interval": ticket.interval,
        "last_polled_at": ticket.last_polled_at,
    }


def _ticket(data: dict[str, Any]) -> BackchannelTicket:
    last = data.get("last_polled_at")
    return BackchannelTicket(
        auth_req_id=str(data["auth_req_id"]),
        user_id=str(data["user_id"]),
        binding_message=str(data["binding_message"]),
        requested=parse_authorization_details(data["requested"]),
        created_at=float(data["created_at"]),
        expires_at=float(data["expires_at"]),
        interval=int(data["interval"]),
        last_polled_at=None if last is None else float(last),
    )


def _token_json(token: TokenSet) -> dict[str, Any]:
    return {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "user_id": token.user_id,
        "grant_id": token.grant_id,
        "obtained_at": token.obtained_at,
        "expires_at": token.expires_at,
        "authorization_details": dump_details(token.authorization_details),
    }


def _token(data: dict[str, Any]) -> TokenSet:
    grant_id = data.get("grant_id")
    return TokenSet(
        access_token=str(data["access_token"]),
        token_type=str(data["token_type"]),
        user_id=str(data["user_id"]),
        grant_id=None if grant_id is None else str(grant_id),
        obtained_at=int(data["obtained_at"]),
        expires_at=int(data["expires_at"]),
        authorization_details=parse_authorization_details(data["authorization_details"]),
    )


class TokenFile(_Stored):
    """The tokens and pending requests in one private JSON file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(f".{path.name}.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Advisory, between PatientKey processes: a read-modify-write is never interleaved.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> _State:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _State()
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
                raise ValueError("not a version 1 token file")  # noqa: TRY301 - one message for all
            tickets = [_ticket(item) for item in data["pending"]]
            tokens = [_token(item) for item in data["tokens"]]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OAuthError) as exc:
            # The text is never echoed: it holds bearer tokens.
            raise ConfigError(f"{self.path} is not a PatientKey token file") from exc
        state = _State()
        for ticket in tickets:
            state.pending[ticket.auth_req_id] = ticket
        for token in tokens:
            state.put_token(token)
        return state

    def _write(self, state: _State) -> None:
        data = {
            "version": FILE_VERSION,
            "pending": [_ticket_json(t) for t in state.pending.values()],
            "tokens": [_token_json(t) for t in state.tokens.values()],
        }
        write_private(self.path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))

    @contextlib.contextmanager
    def _update(self) -> Iterator[_State]:
        with self._locked():
            state = self._read()
            yield state
            self._write(state)
