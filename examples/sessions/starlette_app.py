"""Starlette (or FastAPI, the same middleware) with its sessions in Redis
(starsessions): the cookie holds an id, Redis the data, any instance reads it.

    pip install starlette starsessions redis uvicorn
    PORT=8001 REDIS_URL=redis://127.0.0.1:6379/0 python starlette_app.py
"""

import os
from urllib.parse import parse_qs

import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starsessions import SessionAutoloadMiddleware, SessionMiddleware
from starsessions.stores.redis import RedisStore

redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
store = RedisStore(connection=redis, prefix="myapp:session:")


async def login(request: Request) -> JSONResponse | PlainTextResponse:
    # A form body, read without python-multipart (request.form() would need it).
    user = parse_qs((await request.body()).decode()).get("user", [""])[0]
    if not user:
        return PlainTextResponse("send user=NAME\n", 400)
    request.session.clear()
    request.session["user"] = user
    return JSONResponse({"user": user})


async def me(request: Request) -> JSONResponse | PlainTextResponse:
    user = request.session.get("user")
    return JSONResponse({"user": user}) if user else PlainTextResponse("not logged in\n", 401)


async def logout(request: Request) -> JSONResponse:
    request.session.clear()  # starsessions deletes the key in Redis
    return JSONResponse({"user": None})


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[
        Route("/login", login, methods=["POST"]),
        Route("/me", me),
        Route("/logout", logout, methods=["POST"]),
        Route("/health", health),
    ],
    middleware=[
        # cookie_https_only=True (the default) behind TLS; False for this plain-HTTP example.
        Middleware(SessionMiddleware, store=store, lifetime=3600, cookie_https_only=False),
        Middleware(SessionAutoloadMiddleware, paths=["/login", "/me", "/logout"]),
    ],
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8001")))
