"""Stateless sessions: the login is a signed token (PyJWT) in a cookie. No
store to run; every instance checks the signature with the same secret.

    pip install starlette pyjwt uvicorn
    PORT=8001 APP_SECRET=... python jwt_app.py

The trade-off: a token stays valid until it expires. Logout drops the cookie
from this browser, but a copied token still works until `exp`: keep tokens
short-lived, or keep a deny-list (in Redis: then there is a store again).
"""

import os
import time
from urllib.parse import parse_qs

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

SECRET = os.environ.get("APP_SECRET", "change-me")  # the same for every instance
LIFETIME = 3600
COOKIE = "token"


async def login(request: Request) -> Response:
    # A form body, read without python-multipart (request.form() would need it).
    user = parse_qs((await request.body()).decode()).get("user", [""])[0]
    if not user:
        return PlainTextResponse("send user=NAME\n", 400)
    now = int(time.time())
    token = jwt.encode({"sub": user, "iat": now, "exp": now + LIFETIME}, SECRET, "HS256")
    response = JSONResponse({"user": user})
    response.set_cookie(COOKIE, token, max_age=LIFETIME, httponly=True, samesite="lax")
    return response


async def me(request: Request) -> Response:
    token = request.cookies.get(COOKIE, "")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])  # never trust the token's alg
    except jwt.InvalidTokenError:
        return PlainTextResponse("not logged in\n", 401)
    return JSONResponse({"user": claims["sub"]})


async def logout(request: Request) -> Response:
    response = JSONResponse({"user": None})
    response.delete_cookie(COOKIE)
    return response


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[
        Route("/login", login, methods=["POST"]),
        Route("/me", me),
        Route("/logout", logout, methods=["POST"]),
        Route("/health", health),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8001")))
