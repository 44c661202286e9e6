"""The SQL statements of the SQLite store, one constant each, by table."""

# -- releases
ADD_RELEASE = """INSERT INTO releases (service, version, spec_json, created_at)
    VALUES (?, ?, ?, ?)
    ON CONFLICT (service, version) DO UPDATE SET spec_json = excluded.spec_json"""
SELECT_SPEC = "SELECT spec_json FROM releases WHERE service = ? AND version = ?"
RELEASE_COLUMNS = "service, version, status, created_at, last_deployed_at"
SELECT_RELEASES = f"""SELECT {RELEASE_COLUMNS} FROM releases WHERE service = ?
    ORDER BY created_at DESC, id DESC"""
SELECT_STATUS = "SELECT status FROM releases WHERE service = ? AND version = ?"
SELECT_BY_STATUS = "SELECT version FROM releases WHERE service = ? AND status = ?"
SET_STATUS = "UPDATE releases SET status = ? WHERE service = ? AND status = ?"
MAKE_CURRENT = """UPDATE releases SET status = 'current', last_deployed_at = ?
    WHERE service = ? AND version = ?"""
TOUCH_CURRENT = "UPDATE releases SET last_deployed_at = ? WHERE service = ? AND version = ?"
SET_RELEASE_STATUS = "UPDATE releases SET status = ? WHERE service = ? AND version = ?"
# Newest first, with whether anything still needs the release's definition: a
# saved instance (to restart or adopt it) or an unfinished deploy (to recover it).
SELECT_PRUNE_CANDIDATES = """SELECT r.version, r.status,
        EXISTS (SELECT 1 FROM instances i
                WHERE i.service = r.service AND i.version = r.version)
        OR EXISTS (SELECT 1 FROM deploys d
                   WHERE d.service = r.service AND d.version = r.version
                   AND d.outcome IS NULL) AS in_use
    FROM releases r WHERE r.service = ? ORDER BY r.created_at DESC, r.id DESC"""
DELETE_RELEASE = "DELETE FROM releases WHERE service = ? AND version = ?"

# -- deploys and journal
INSERT_DEPLOY = """INSERT INTO deploys
    (service, version, strategy, plan_json, state, started_at, updated_at)
    VALUES (?, ?, ?, ?, 'pending', ?, ?)"""
DEPLOY_COLUMNS = """id, service, version, strategy, plan_json, state, outcome, reason,
    started_at, updated_at, finished_at"""
SELECT_DEPLOY = f"SELECT {DEPLOY_COLUMNS} FROM deploys WHERE id = ?"
SELECT_DEPLOYS = f"SELECT {DEPLOY_COLUMNS} FROM deploys WHERE service = ? ORDER BY id DESC LIMIT ?"
SELECT_UNFINISHED = f"SELECT {DEPLOY_COLUMNS} FROM deploys WHERE outcome IS NULL ORDER BY id"
SELECT_OUTCOME = "SELECT outcome FROM deploys WHERE id = ?"
SET_DEPLOY_STATE = "UPDATE deploys SET state = ?, updated_at = ? WHERE id = ?"
FINISH_DEPLOY = """UPDATE deploys SET state = ?, outcome = ?, reason = ?,
    updated_at = ?, finished_at = ? WHERE id = ?"""
INSERT_JOURNAL = """INSERT INTO journal (deploy_id, step_index, step_json, phase, detail, at)
    VALUES (?, ?, ?, ?, ?, ?)"""
SELECT_JOURNAL = """SELECT seq, deploy_id, step_index, step_json, phase, detail, at
    FROM journal WHERE deploy_id = ? ORDER BY seq"""

# -- instances
SAVE_INSTANCE = """INSERT INTO instances
    (id, service, version, host, port, pid, pid_started, state, updated_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET service = excluded.service, version = excluded.version,
        host = excluded.host, port = excluded.port, pid = excluded.pid,
        pid_started = excluded.pid_started, state = excluded.state,
        updated_at = excluded.updated_at"""
DELETE_INSTANCE = "DELETE FROM instances WHERE id = ?"
INSTANCE_COLUMNS = "id, service, version, host, port, pid, pid_started, state"
SELECT_ALL_INSTANCES = f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY service, id"
SELECT_INSTANCES = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE service = ? ORDER BY id"

# -- lock
LOCK_COLUMNS = "service, owner, deploy_id, acquired_at, heartbeat_at, took_over_from"
SELECT_LOCK = f"SELECT {LOCK_COLUMNS} FROM locks WHERE service = ?"
TAKE_LOCK = f"""INSERT OR REPLACE INTO locks ({LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"""
HEARTBEAT = "UPDATE locks SET heartbeat_at = ? WHERE service = ? AND owner = ?"
RELEASE_LOCK = "DELETE FROM locks WHERE service = ? AND owner = ?"

# -- events
INSERT_EVENT = """INSERT INTO events (service, deploy_id, kind, data_json, at)
    VALUES (?, ?, ?, ?, ?)"""
EVENT_COLUMNS = "id, service, deploy_id, kind, data_json, at"
SELECT_EVENTS = f"SELECT {EVENT_COLUMNS} FROM events WHERE id > ? ORDER BY id LIMIT ?"
SELECT_SERVICE_EVENTS = f"""SELECT {EVENT_COLUMNS} FROM events
    WHERE id > ? AND service = ? ORDER BY id LIMIT ?"""
# AUTOINCREMENT keeps ids rising after a prune: a stream resumes by id.
LAST_EVENT_ID = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
PRUNE_OLD_EVENTS = "DELETE FROM events WHERE at < ?"
# Everything below the newest `max_count` ids (OFFSET counts from the newest).
PRUNE_EXTRA_EVENTS = """DELETE FROM events WHERE id <=
    (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)"""
