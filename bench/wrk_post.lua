-- wrk script of the serve benchmark: every request submits a job and
-- waits for its result (POST /v1/jobs?wait=5).
wrk.method = "POST"
wrk.body = '{"input":41}'
wrk.headers["Content-Type"] = "application/json"
