"""Flask with its sessions in Redis (Flask-Session): any instance knows every
login, so a deploy that replaces all of them logs nobody out.

    pip install flask flask-session redis
    PORT=8001 REDIS_URL=redis://127.0.0.1:6379/0 SECRET_KEY=... python flask_app.py

zerodown's runtime sets PORT for each instance; REDIS_URL and SECRET_KEY go
in the service's `env` table, the same for every instance.
"""

import os

import redis
from flask import Flask, jsonify, request, session
from flask_session import Session

app = Flask(__name__)
app.config.update(
    SECRET_KEY=os.environ.get("SECRET_KEY", "change-me"),
    SESSION_TYPE="redis",
    SESSION_REDIS=redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")),
    SESSION_KEY_PREFIX="myapp:session:",
    SESSION_COOKIE_HTTPONLY=True,
    SESSION_COOKIE_SAMESITE="Lax",
    PERMANENT_SESSION_LIFETIME=3600,  # also the key's TTL in Redis
)
Session(app)


@app.post("/login")
def login():
    user = request.form.get("user") or (request.get_json(silent=True) or {}).get("user")
    if not user:
        return "send user=NAME\n", 400
    session.clear()
    session.permanent = True
    session["user"] = user
    return jsonify(user=user)


@app.get("/me")
def me():
    user = session.get("user")
    return (jsonify(user=user), 200) if user else ("not logged in\n", 401)


@app.post("/logout")
def logout():
    session.clear()  # Flask-Session deletes the key in Redis: every instance forgets it
    return jsonify(user=None)


@app.get("/health")
def health():
    return "ok"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8001")))
