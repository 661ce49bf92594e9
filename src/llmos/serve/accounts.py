"""Labeler accounts for the labeling pages: salted scrypt password hashes, login sessions kept
in the database (so a restarted server keeps everyone logged in), and two roles: `owner` (edits
projects, instructions, prompt queues and accounts, exports) and `labeler`.

The session cookie holds a random token; the database keeps only its SHA-256, so a copy of the
database does not log anyone in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from sqlalchemy import Float, ForeignKey, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from llmos.db import Base

COOKIE = "llmos_label"
SESSION_DAYS = 30
ROLES = ("owner", "labeler")
# scrypt cost: n=2**14, r=8 takes 16 MiB and about 40 ms per hash on one core (RFC 7914's
# interactive-login setting), slow enough for guessing, fast enough for tests.
SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class User(Base):
    __tablename__ = "label_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default="labeler")
    created: Mapped[float] = mapped_column(Float, default=time.time)

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "role": self.role}


class LoginSession(Base):
    __tablename__ = "label_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("label_users.id", ondelete="CASCADE"))
    created: Mapped[float] = mapped_column(Float, default=time.time)
    expires: Mapped[float] = mapped_column(Float)


# ---- passwords ---------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(digest) // 2)
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def check_new_account(name: str, password: str, role: str) -> None:
    if not (1 <= len(name) <= 64) or not all(c.isalnum() or c in "._-@" for c in name):
        raise ValueError("a user name is 1-64 letters, digits or . _ - @")
    if len(password) < 8:
        raise ValueError("a password has at least 8 characters")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")


# ---- users and sessions ------------------------------------------------------------------------


def count_users(s: Session) -> int:
    return s.scalar(select(func.count()).select_from(User)) or 0


def add_user(s: Session, name: str, password: str, role: str = "labeler") -> User:
    check_new_account(name, password, role)
    if s.scalar(select(User).where(User.name == name)):
        raise ValueError(f"a user named {name!r} already exists")
    user = User(name=name, password_hash=hash_password(password), role=role)
    s.add(user)
    s.flush()
    return user


def set_password(s: Session, name: str, password: str) -> None:
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        raise ValueError(f"no user named {name!r}")
    check_new_account(name, password, user.role)
    user.password_hash = hash_password(password)
    s.execute(delete(LoginSession).where(LoginSession.user_id == user.id))


def login(s: Session, name: str, password: str) -> str | None:
    """A new session token for a right name and password, else None."""
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        check_password(password, hash_password("x" * 8))  # same time as a wrong password
        return None
    if not check_password(password, user.password_hash):
        return None
    return open_session(s, user)


def open_session(s: Session, user: User) -> str:
    token = secrets.token_urlsafe(32)
    s.add(LoginSession(token_hash=_digest(token), user_id=user.id,
                       expires=time.time() + SESSION_DAYS * 86400))
    return token


def session_user(s: Session, token: str | None) -> User | None:
    if not token:
        return None
    row = s.get(LoginSession, _digest(token))
    if row is None or row.expires < time.time():
        return None
    return s.get(User, row.user_id)


def logout(s: Session, token: str | None) -> None:
    if token:
        s.execute(delete(LoginSession).where(LoginSession.token_hash == _digest(token)))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
