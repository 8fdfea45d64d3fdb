package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
	"github.com/musicd/musicd/ownership"
	"github.com/musicd/musicd/state"
	"github.com/musicd/musicd/state/queue"
)

// State is what the native REST API needs from the keyed state service (*state.Service). Errors
// wrap the state package's sentinels (state.ErrInvalid, ErrNotFound, ErrExists, ErrNotHolder,
// ErrConditionFailed, ErrLocked, ErrUnavailable), which the API maps to HTTP statuses through
// errorTable.
type State interface {
	CreateKeyspace(ctx context.Context, ks state.Keyspace) error
	DropKeyspace(ctx context.Context, name string) error
	Keyspaces(ctx context.Context) ([]state.Keyspace, error)
	Keyspace(ctx context.Context, name string) (state.Keyspace, error)
	CreateTable(ctx context.Context, t state.Table) error
	DropTable(ctx context.Context, keyspace, name string) error
	Tables(ctx context.Context, keyspace string) ([]state.Table, error)
	// Table is called by every row and lock request to parse its key and values: it should
	// answer from a cache.
	Table(ctx context.Context, keyspace, name string) (state.Table, error)
	Write(ctx context.Context, req state.WriteRequest) (state.WriteResult, error)
	// Read returns ErrNotFound when there is no row.
	Read(ctx context.Context, req state.ReadRequest) (state.StoredRow, error)
	Select(ctx context.Context, keyspace, table string, q state.Query, c state.Consistency) (state.Page, error)
	CreateLock(ctx context.Context, keyspace, table string, key journal.Row, opts locks.RefOptions) (state.LockRef, error)
	// AcquireLock returns a *state.LockedError (errors.Is ErrLocked) when the lock was not
	// granted within wait.
	AcquireLock(ctx context.Context, ref state.LockRef, wait time.Duration) (state.LockGrant, error)
	ReleaseLock(ctx context.Context, ref state.LockRef) error
	RenewLock(ctx context.Context, ref state.LockRef) error
	ForceRelease(ctx context.Context, ref state.LockRef) error
	LockHolders(ctx context.Context, keyspace, table string, key journal.Row) ([]state.LockHolder, error)
}

// Error codes of the API: stable strings clients may switch on. errorTable says what each means.
const (
	codeInvalid          = "invalid_argument"
	codeUnauthenticated  = "unauthenticated"
	codeForbidden        = "forbidden"
	codeNotFound         = "not_found"
	codeMethodNotAllowed = "method_not_allowed"
	codeExists           = "already_exists"
	codeLeaseExpired     = "lease_expired"
	codeNotHolder        = "not_holder"
	codeNotOwner         = "not_owner"
	codeConditionFailed  = "condition_failed"
	codeBodyTooLarge     = "body_too_large"
	codeLocked           = "locked"
	codeInternal         = "internal"
	codeUnavailable      = "unavailable"
)

// errorCode is one row of the error table.
type errorCode struct {
	code   string
	status int
	// causes are the errors (errors.Is) that map to this code, in the order they are tried.
	causes []error
	// doc is the meaning, for docs/api.md and the OpenAPI document.
	doc string
}

// errorTable is the one table of the API's errors: every error response carries one of these
// codes with its status. An error matching none of the causes is a bug: 500 internal, logged.
// The locks sentinels are a safety net: the state service is expected to wrap them in its own.
func errorTable() []errorCode {
	return []errorCode{
		{codeInvalid, http.StatusBadRequest, []error{state.ErrInvalid, ownership.ErrInvalid, locks.ErrInvalidName, locks.ErrInvalidRef, locks.ErrInvalidOptions},
			"The request is malformed or names something invalid: bad JSON, an unknown field or column, a value of the wrong type, a bad identifier, parameter, header or page token. Nothing changed."},
		{codeUnauthenticated, http.StatusUnauthorized, nil,
			"Tokens are configured and the request has no `Authorization: Bearer` token, or an unknown one. The response carries `WWW-Authenticate`."},
		{codeForbidden, http.StatusForbidden, nil,
			"The token may not use this keyspace, or is read-only and the request writes."},
		{codeNotFound, http.StatusNotFound, []error{state.ErrNotFound},
			"No such keyspace, table, row or endpoint, or the lock reference has left its queue (released, expired or forced out)."},
		{codeMethodNotAllowed, http.StatusMethodNotAllowed, nil,
			"The path exists but not with this method; `Allow` lists the methods it has."},
		{codeExists, http.StatusConflict, []error{state.ErrExists},
			"The keyspace or table exists already."},
		{codeLeaseExpired, http.StatusGone, []error{queue.ErrLeaseExpired},
			"The queue job's lease has run out: the job goes back to the queue (or to the dead letters), and this claim may no longer complete, release or extend it."},
		{codeNotHolder, http.StatusConflict, []error{state.ErrNotHolder, locks.ErrNotHeld, locks.ErrLockLost},
			"A critical operation or a lock call came from a lock reference that does not hold the key's lock (never did, released, expired, forced out, or fenced by a newer holder); or a queue call came with a token that does not hold the job (another claim, completed, released), or would change or delete a job a worker has claimed."},
		{codeNotOwner, http.StatusConflict, nil,
			"The row belongs to an ownership partition that another site owns: `partition` names it and `owner` its owner (site, instance, address, epoch). Send the write there. Nothing changed."},
		{codeConditionFailed, http.StatusPreconditionFailed, []error{state.ErrConditionFailed},
			"A compare-and-set found another version (`If-Match`), an existing row (`If-None-Match: *`), no row, or other column values (`if`). Nothing changed."},
		{codeBodyTooLarge, http.StatusRequestEntityTooLarge, nil,
			"The request body is larger than `api.max_body_bytes`."},
		{codeLocked, http.StatusLocked, []error{state.ErrLocked},
			"The key's lock stayed held by someone else until the wait ended; `holders` names the holders."},
		{codeInternal, http.StatusInternalServerError, nil,
			"A bug in musicd; it is logged with the request id (`X-Request-Id`)."},
		{codeUnavailable, http.StatusServiceUnavailable, []error{state.ErrUnavailable, locks.ErrClosed, context.DeadlineExceeded, context.Canceled},
			"A dependency (Cassandra, ZooKeeper, the journal) did not answer in time, the request ran past `api.request_timeout`, or the keyed state service is not running. Retry with backoff."},
	}
}

// apiError is an error response.
type apiError struct {
	status  int
	code    string
	msg     string
	holders []state.LockHolder
	// partition and owner: a not_owner error's partition and its owner.
	partition string
	owner     *ownership.Owner
	// invalidToken adds error="invalid_token" to WWW-Authenticate.
	invalidToken bool
	// cause is logged for internal errors; never shown to the client.
	cause error
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func invalid(format string, a ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, code: codeInvalid, msg: fmt.Sprintf(format, a...)}
}

// toAPIError maps any error of a handler or of the state service to its response, through
// errorTable.
func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var le *state.LockedError
	if errors.As(err, &le) {
		return &apiError{status: http.StatusLocked, code: codeLocked, msg: err.Error(), holders: le.Holders}
	}
	for _, ec := range errorTable() {
		for _, c := range ec.causes {
			if errors.Is(err, c) {
				msg := err.Error()
				if errors.Is(err, context.DeadlineExceeded) {
					msg = "the request did not finish in time: " + msg
				}
				return &apiError{status: ec.status, code: ec.code, msg: msg}
			}
		}
	}
	return &apiError{status: http.StatusInternalServerError, code: codeInternal, msg: "internal error; it is logged", cause: err}
}

// errorBody is the JSON shape of every error the API returns: a stable code and a message, and
// for locked the lock's holders.
type errorBody struct {
	Code    string       `json:"code"`
	Message string       `json:"message"`
	Holders []holderJSON `json:"holders,omitempty"`
	// Partition and Owner: not_owner only.
	Partition string           `json:"partition,omitempty"`
	Owner     *ownership.Owner `json:"owner,omitempty"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, errorBody{Code: code, Message: msg})
}

// writeAPIError writes e, with the headers its status calls for.
func writeAPIError(w http.ResponseWriter, e *apiError) {
	if e.status == http.StatusUnauthorized {
		v := `Bearer realm="musicd"`
		if e.invalidToken {
			v += `, error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", v)
	}
	body := errorBody{Code: e.code, Message: e.msg}
	if e.code == codeLocked {
		body.Holders = holdersJSON(e.holders)
	}
	body.Partition, body.Owner = e.partition, e.owner
	writeJSON(w, e.status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client may be gone; nothing useful to do with the error
}

// call is one /v1 request being served.
type call struct {
	p     principal
	reqID string
	query url.Values
}

// v1Handler serves one /v1 route; an error becomes the response through toAPIError.
type v1Handler func(w http.ResponseWriter, r *http.Request, c *call) error

// v1Route is one route of the native API.
type v1Route struct {
	pattern string // ServeMux pattern, method included
	h       v1Handler
	// params are the query parameters the route takes; any other is refused (a misspelt
	// consistency must not silently become eventual). anyParams: every parameter is taken (select:
	// the rest are filters).
	params    []string
	anyParams bool
	// stateless routes work without a State (the OpenAPI document).
	stateless bool
	// queue routes need Deps.Queues rather than a State.
	queue bool
}

// Query parameters and headers of the row and lock routes.
const (
	paramConsistency  = "consistency"
	paramLock         = "lock"
	paramWait         = "wait"
	paramLimit        = "limit"
	paramPage         = "page"
	paramForce        = "force"
	headerConsistency = "Music-Consistency"
	headerLock        = "Music-Lock"
	headerWait        = "Music-Wait"
	headerRequestID   = "X-Request-Id"

	// defaultLockLease is the lease of a lock reference created without one: a client that goes
	// away does not hold a key forever.
	defaultLockLease = time.Minute
)

// v1Routes lists the native API's routes. docs/api.md and the OpenAPI document describe exactly
// these (TestOpenAPIMatchesRoutes).
func (s *Server) v1Routes() []v1Route {
	rowParams := []string{paramConsistency, paramLock, paramWait}
	return append([]v1Route{
		{pattern: "GET /v1/openapi.json", h: s.openAPI, stateless: true},

		{pattern: "GET /v1/keyspaces", h: s.listKeyspaces},
		{pattern: "POST /v1/keyspaces", h: s.createKeyspace},
		{pattern: "GET /v1/keyspaces/{ks}", h: s.getKeyspace},
		{pattern: "DELETE /v1/keyspaces/{ks}", h: s.dropKeyspace},

		{pattern: "GET /v1/keyspaces/{ks}/tables", h: s.listTables},
		{pattern: "POST /v1/keyspaces/{ks}/tables", h: s.createTable},
		{pattern: "GET /v1/keyspaces/{ks}/tables/{table}", h: s.getTable},
		{pattern: "DELETE /v1/keyspaces/{ks}/tables/{table}", h: s.dropTable},

		{pattern: "GET /v1/keyspaces/{ks}/tables/{table}/rows", h: s.selectRows, anyParams: true},
		{pattern: "POST /v1/keyspaces/{ks}/tables/{table}/rows", h: s.insertRow, params: rowParams},
		{pattern: "GET /v1/keyspaces/{ks}/tables/{table}/rows/{key...}", h: s.getRow, params: rowParams},
		{pattern: "PUT /v1/keyspaces/{ks}/tables/{table}/rows/{key...}", h: s.writeRow(state.MutPut), params: rowParams},
		{pattern: "PATCH /v1/keyspaces/{ks}/tables/{table}/rows/{key...}", h: s.writeRow(state.MutUpdate), params: rowParams},
		{pattern: "DELETE /v1/keyspaces/{ks}/tables/{table}/rows/{key...}", h: s.writeRow(state.MutDelete), params: rowParams},

		{pattern: "POST /v1/keyspaces/{ks}/tables/{table}/locks/{key...}", h: s.createLock},
		{pattern: "GET /v1/keyspaces/{ks}/tables/{table}/locks/{key...}", h: s.lockHolders},
		{pattern: "POST /v1/locks/{ref}/acquire", h: s.acquireLock, params: []string{paramWait}},
		{pattern: "POST /v1/locks/{ref}/renew", h: s.renewLock},
		{pattern: "DELETE /v1/locks/{ref}", h: s.releaseLock, params: []string{paramForce}},
	}, append(s.queueRoutes(), s.ownershipRoutes()...)...)
}

// validRequestID reports whether id is a request id musicd takes and echoes: 1-64 of
// A-Z a-z 0-9 . _ : - (checked on every request, so by hand rather than with a regexp).
func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// requestID returns the request's X-Request-Id, or a new random one when it has none.
func requestID(r *http.Request) string {
	if id := r.Header.Get(headerRequestID); id != "" {
		return id
	}
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand documents it)
	return hex.EncodeToString(b[:])
}

// serveV1 adapts a route's handler: request id, query parsing and checking, authentication, the
// State check, and the mapping of errors to responses.
func (s *Server) serveV1(rt v1Route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := newCall(w, r)
		err := func() error {
			if err := c.checkID(w); err != nil {
				return err
			}
			p, err := s.auth.authenticate(r)
			if err != nil {
				return err
			}
			c.p = p
			if c.query, err = parseQuery(r, rt.anyParams, rt.params); err != nil {
				return err
			}
			return s.dispatch(rt.queue, rt.stateless, func() error { return rt.h(w, r, c) })
		}()
		if err == nil {
			return
		}
		e := toAPIError(err)
		s.logFailure("REST", r, c, rt.pattern, e)
		writeAPIError(w, e)
	}
}

// newCall gives a request its id (the client's X-Request-Id, or a new one), echoed in the
// response.
func newCall(w http.ResponseWriter, r *http.Request) *call {
	c := &call{reqID: requestID(r)}
	w.Header().Set(headerRequestID, c.reqID)
	return c
}

// checkID refuses a client's request id that is not one (and does not echo it).
func (c *call) checkID(w http.ResponseWriter) error {
	if !validRequestID(c.reqID) {
		w.Header().Del(headerRequestID)
		return invalid("%s must be 1-64 of A-Z a-z 0-9 . _ : -", headerRequestID)
	}
	return nil
}

// parseQuery parses the query string, refusing a parameter given twice and, unless anyParams,
// one not in params. Names are checked in order, so that a request always gets the same error.
func parseQuery(r *http.Request, anyParams bool, params []string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, invalid("query string: %v", err)
	}
	for _, name := range slices.Sorted(maps.Keys(q)) {
		if !anyParams && !slices.Contains(params, name) {
			return nil, invalid("unknown query parameter %q (this endpoint takes %s)", name, paramList(params))
		}
		if len(q[name]) > 1 {
			return nil, invalid("query parameter %q given %d times", name, len(q[name]))
		}
	}
	return q, nil
}

// dispatch runs a route's handler if the service it needs (the queue, or the keyed state unless
// stateless) runs in this daemon.
func (s *Server) dispatch(queue, stateless bool, handle func() error) error {
	switch {
	case queue && s.deps.Queues == nil:
		return &apiError{status: http.StatusServiceUnavailable, code: codeUnavailable, msg: "the work queue (musicQ) is not running in this daemon"}
	case !queue && s.state == nil && !stateless:
		return &apiError{status: http.StatusServiceUnavailable, code: codeUnavailable, msg: "the keyed state service is not running in this daemon"}
	}
	return handle()
}

// logFailure logs a failed request: a bug as an error, a dependency's failure as a warning, a
// request its client abandoned at debug level.
func (s *Server) logFailure(api string, r *http.Request, c *call, pattern string, e *apiError) {
	switch {
	case e.code == codeInternal:
		s.deps.Logger.Error(api+" request failed: a bug", "request_id", c.reqID, "method", r.Method, "route", pattern, "err", e.cause)
	case e.status >= 500 && r.Context().Err() != nil:
		// The client went away (or the server is closing its connection): nothing failed.
		s.deps.Logger.Debug(api+" request abandoned", "request_id", c.reqID, "route", pattern, "err", e.msg)
	case e.status >= 500:
		s.deps.Logger.Warn(api+" request failed", "request_id", c.reqID, "route", pattern, "code", e.code, "err", e.msg)
	}
}

func paramList(params []string) string {
	if len(params) == 0 {
		return "none"
	}
	return strings.Join(params, ", ")
}

// opContext bounds the state calls of a request: RequestTimeout plus the lock wait it asked for
// (the longest allowed when it asked for none: the service's default wait must be within it).
func (s *Server) opContext(r *http.Request, wait time.Duration, waitSet bool) (context.Context, context.CancelFunc) {
	if !waitSet {
		wait = s.cfg.effectiveMaxWait()
	}
	return context.WithTimeout(r.Context(), s.cfg.RequestTimeout+wait)
}

// decodeBody reads r's JSON body into dst (an object; unknown fields refused). With required
// unset, an empty body leaves dst as it is. The body is bounded by MaxBodyBytes.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, dst any, required bool) error {
	return s.decodeBodyWith(w, r, dst, required, true)
}

// decodeBodyWith is decodeBody; strict refuses unknown fields (the MUSIC v2 API, like MUSIC,
// ignores them).
func (s *Server) decodeBodyWith(w http.ResponseWriter, r *http.Request, dst any, required, strict bool) error {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &apiError{status: http.StatusRequestEntityTooLarge, code: codeBodyTooLarge,
				msg: fmt.Sprintf("request body larger than %d bytes", mbe.Limit)}
		}
		return invalid("reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		if required {
			return invalid("this request needs a JSON body")
		}
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(dst); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid("request body: unexpected data after the JSON object")
	}
	return nil
}

// jsonError describes a JSON decoding error as a 400 naming the field.
func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return invalid("request body is not valid JSON (at byte %d): %v", se.Offset, err)
	case errors.As(err, &te):
		if te.Field == "" {
			return invalid("request body: want a JSON object, got %s", te.Value)
		}
		return invalid("request body: field %q: want %s, got %s", te.Field, jsonTypeName(te.Type.String()), te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalid("request body: JSON ends early")
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return invalid("request body: unknown field %s", name)
	}
	return invalid("request body: %v", err)
}

func jsonTypeName(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
		return "an integer"
	case strings.HasPrefix(goType, "map"), strings.HasPrefix(goType, "struct"), strings.HasPrefix(goType, "api."):
		return "an object"
	case strings.HasPrefix(goType, "[]"):
		return "an array"
	case goType == "bool":
		return "true or false"
	}
	return goType
}

// param returns a setting given as a query parameter or a header; both given and different is
// an error.
func (c *call) param(r *http.Request, name, header string) (string, error) {
	q, h := c.query.Get(name), strings.TrimSpace(r.Header.Get(header))
	if q != "" && h != "" && q != h {
		return "", invalid("%s=%q and %s: %q disagree", name, q, header, h)
	}
	if q != "" {
		return q, nil
	}
	return h, nil
}

// wait parses the lock wait (wait, Music-Wait): a Go duration within MaxWait.
func (s *Server) wait(r *http.Request, c *call) (time.Duration, bool, error) {
	v, err := c.param(r, paramWait, headerWait)
	if err != nil || v == "" {
		return 0, false, err
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, false, invalid("wait %q: want a duration like 500ms or 5s", v)
	}
	if limit := s.cfg.effectiveMaxWait(); d > limit {
		return 0, false, invalid("wait %s is longer than the %s allowed (api.max_wait, within api.write_timeout)", d, limit)
	}
	return d, true, nil
}

// consistencyOpts are the consistency settings of a row operation.
type consistencyOpts struct {
	c       state.Consistency
	lock    state.LockRef
	wait    time.Duration
	waitSet bool
}

func (s *Server) consistency(r *http.Request, c *call) (consistencyOpts, error) {
	var o consistencyOpts
	v, err := c.param(r, paramConsistency, headerConsistency)
	if err != nil {
		return o, err
	}
	if o.c, err = state.ParseConsistency(v); err != nil {
		return o, err
	}
	lock, err := c.param(r, paramLock, headerLock)
	if err != nil {
		return o, err
	}
	o.lock = state.LockRef(lock)
	switch {
	case o.c == state.Critical && lock == "":
		return o, invalid("consistency critical needs the lock reference that holds the key's lock (%s header or lock parameter)", headerLock)
	case o.c != state.Critical && lock != "":
		return o, invalid("a lock reference is only used by consistency critical, not %s", o.c)
	case lock != "" && o.lock.Keyspace() == "":
		return o, invalid("lock reference %q is not one musicd issued", lock)
	}
	if o.wait, o.waitSet, err = s.wait(r, c); err != nil {
		return o, err
	}
	return o, nil
}

// keyFromPath returns the primary key values in r's path after the first n segments, each
// unescaped on its own so that a value holding "/" (sent as %2F) stays one value. The mux's
// {key...} wildcard cannot be used: it is unescaped as a whole.
func keyFromPath(r *http.Request, n int) ([]string, error) {
	segs := strings.Split(strings.TrimPrefix(r.URL.EscapedPath(), "/"), "/")
	if len(segs) <= n || (len(segs) == n+1 && segs[n] == "") {
		return nil, nil
	}
	out := make([]string, 0, len(segs)-n)
	for _, seg := range segs[n:] {
		v, err := url.PathUnescape(seg)
		if err != nil {
			return nil, invalid("key value %q in the path is not correctly escaped", seg)
		}
		out = append(out, v)
	}
	return out, nil
}

// keySegments is the number of path segments before a key: v1/keyspaces/{ks}/tables/{table}/rows.
const keySegments = 6

// keyPath renders key as the path segments of a row: the inverse of keyFromPath and ParseKey.
func keyPath(t state.Table, key journal.Row) string {
	parts := make([]string, len(key))
	for i, f := range key {
		col, _ := t.Column(f.Name)
		var s string
		switch v := state.ToJSON(col, f.Value).(type) {
		case string:
			s = v
		case json.Number:
			s = string(v)
		default:
			b, _ := json.Marshal(v)
			s = string(b)
		}
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}

// tableAndKey authorizes the request on its keyspace, fetches the table and parses the key in
// the path.
func (s *Server) tableAndKey(ctx context.Context, r *http.Request, c *call, write bool) (state.Table, journal.Row, error) {
	ks, name := r.PathValue("ks"), r.PathValue("table")
	if err := c.p.authorize(ks, write); err != nil {
		return state.Table{}, nil, err
	}
	t, err := s.state.Table(ctx, ks, name)
	if err != nil {
		return state.Table{}, nil, err
	}
	parts, err := keyFromPath(r, keySegments)
	if err != nil {
		return state.Table{}, nil, err
	}
	key, err := state.ParseKey(t, parts)
	return t, key, err
}

// ---- keyspaces and tables ----

type keyspacesBody struct {
	Keyspaces []state.Keyspace `json:"keyspaces"`
}

type tablesBody struct {
	Tables []state.Table `json:"tables"`
}

func (s *Server) listKeyspaces(w http.ResponseWriter, r *http.Request, c *call) error {
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	all, err := s.state.Keyspaces(ctx)
	if err != nil {
		return err
	}
	out := make([]state.Keyspace, 0, len(all))
	for _, ks := range all {
		if c.p.canRead(ks.Name) {
			out = append(out, ks)
		}
	}
	writeJSON(w, http.StatusOK, keyspacesBody{out})
	return nil
}

func (s *Server) createKeyspace(w http.ResponseWriter, r *http.Request, c *call) error {
	var ks state.Keyspace
	if err := s.decodeBody(w, r, &ks, true); err != nil {
		return err
	}
	if err := c.p.authorize(ks.Name, true); err != nil {
		return err
	}
	if err := ks.Validate(); err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	if err := s.state.CreateKeyspace(ctx, ks); err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/keyspaces/"+ks.Name)
	writeJSON(w, http.StatusCreated, ks)
	return nil
}

// inKeyspace authorizes the request for the keyspace its path names (write: for writing) and
// runs fn with the operation's context: the shape of the keyspace and table handlers.
func (s *Server) inKeyspace(r *http.Request, c *call, write bool, fn func(ctx context.Context, ks string) error) error {
	ks := r.PathValue("ks")
	if err := c.p.authorize(ks, write); err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	return fn(ctx, ks)
}

// answer writes v with status, or the status alone when v is nil, unless err.
func answer(w http.ResponseWriter, status int, v any, err error) error {
	if err != nil {
		return err
	}
	if v == nil {
		w.WriteHeader(status)
		return nil
	}
	writeJSON(w, status, v)
	return nil
}

func (s *Server) getKeyspace(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inKeyspace(r, c, false, func(ctx context.Context, name string) error {
		ks, err := s.state.Keyspace(ctx, name)
		return answer(w, http.StatusOK, ks, err)
	})
}

func (s *Server) dropKeyspace(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inKeyspace(r, c, true, func(ctx context.Context, name string) error {
		return answer(w, http.StatusNoContent, nil, s.state.DropKeyspace(ctx, name))
	})
}

func (s *Server) listTables(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inKeyspace(r, c, false, func(ctx context.Context, ks string) error {
		ts, err := s.state.Tables(ctx, ks)
		if ts == nil {
			ts = []state.Table{}
		}
		return answer(w, http.StatusOK, tablesBody{ts}, err)
	})
}

// tableRequest is the body of POST /v1/keyspaces/{ks}/tables: a table without its keyspace
// (the path names it; a keyspace in the body must agree).
type tableRequest struct {
	Keyspace     string         `json:"keyspace"`
	Name         string         `json:"name"`
	Columns      []state.Column `json:"columns"`
	PartitionKey []string       `json:"partition_key"`
	Clustering   []string       `json:"clustering"`
}

func (s *Server) createTable(w http.ResponseWriter, r *http.Request, c *call) error {
	ks := r.PathValue("ks")
	if err := c.p.authorize(ks, true); err != nil {
		return err
	}
	var req tableRequest
	if err := s.decodeBody(w, r, &req, true); err != nil {
		return err
	}
	if req.Keyspace != "" && req.Keyspace != ks {
		return invalid("the body's keyspace %q is not the path's %q", req.Keyspace, ks)
	}
	t := state.Table{Keyspace: ks, Name: req.Name, Columns: req.Columns, PartitionKey: req.PartitionKey, Clustering: req.Clustering}
	if err := t.Validate(); err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	if err := s.state.CreateTable(ctx, t); err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/keyspaces/"+ks+"/tables/"+t.Name)
	writeJSON(w, http.StatusCreated, t)
	return nil
}

func (s *Server) getTable(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inKeyspace(r, c, false, func(ctx context.Context, ks string) error {
		t, err := s.state.Table(ctx, ks, r.PathValue("table"))
		return answer(w, http.StatusOK, t, err)
	})
}

func (s *Server) dropTable(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.inKeyspace(r, c, true, func(ctx context.Context, ks string) error {
		return answer(w, http.StatusNoContent, nil, s.state.DropTable(ctx, ks, r.PathValue("table")))
	})
}

// ---- rows ----

// rowJSON is a row as returned: every column, and the row's version (its ETag).
type rowJSON struct {
	Values  map[string]any `json:"values"`
	Version int64          `json:"version"`
}

type pageJSON struct {
	Rows []rowJSON `json:"rows"`
	Next string    `json:"next,omitempty"`
}

// writeResultJSON describes an acknowledged write: the row's new version and the journal entry.
type writeResultJSON struct {
	Version int64  `json:"version"`
	Stream  string `json:"stream"`
	Seq     uint64 `json:"seq"`
}

// rowRequest is the body of row writes: regular column values and column conditions.
type rowRequest struct {
	Values map[string]json.RawMessage `json:"values"`
	If     map[string]json.RawMessage `json:"if"`
}

func etag(version int64) string { return `"` + strconv.FormatInt(version, 10) + `"` }

func (s *Server) getRow(w http.ResponseWriter, r *http.Request, c *call) error {
	o, err := s.consistency(r, c)
	if err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, o.wait, o.waitSet)
	defer cancel()
	t, key, err := s.tableAndKey(ctx, r, c, false)
	if err != nil {
		return err
	}
	row, err := s.state.Read(ctx, state.ReadRequest{Keyspace: t.Keyspace, Table: t.Name, Key: key,
		Consistency: o.c, Lock: o.lock, Wait: o.wait})
	if err != nil {
		return err
	}
	w.Header().Set("ETag", etag(row.Version))
	writeJSON(w, http.StatusOK, rowJSON{Values: state.RowJSON(t, row), Version: row.Version})
	return nil
}

func (s *Server) selectRows(w http.ResponseWriter, r *http.Request, c *call) error {
	ks := r.PathValue("ks")
	if err := c.p.authorize(ks, false); err != nil {
		return err
	}
	q := state.Query{Limit: state.DefaultPageRows, Page: c.query.Get(paramPage)}
	if v := c.query.Get(paramLimit); v != "" || c.query.Has(paramLimit) {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > state.MaxPageRows {
			return invalid("limit %q: want an integer from 1 to %d", v, state.MaxPageRows)
		}
		q.Limit = n
	}
	for _, p := range []string{paramLock, paramWait} {
		if c.query.Has(p) {
			return invalid("a select takes no %s parameter", p)
		}
	}
	cv, err := c.param(r, paramConsistency, headerConsistency)
	if err != nil {
		return err
	}
	cons, err := state.ParseConsistency(cv)
	if err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	t, err := s.state.Table(ctx, ks, r.PathValue("table"))
	if err != nil {
		return err
	}
	filters := map[string]string{}
	for name, vs := range c.query {
		switch name {
		case paramLimit, paramPage, paramConsistency:
			continue
		}
		filters[name] = vs[0]
	}
	if q.Filters, err = state.ParseFilters(t, filters); err != nil {
		return err
	}
	page, err := s.state.Select(ctx, t.Keyspace, t.Name, q, cons)
	if err != nil {
		return err
	}
	out := pageJSON{Rows: make([]rowJSON, len(page.Rows)), Next: page.Next}
	for i, row := range page.Rows {
		out.Rows[i] = rowJSON{Values: state.RowJSON(t, row), Version: row.Version}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// condition builds the compare-and-set condition of a write from If-Match, If-None-Match and
// the body's "if" column values. nil: unconditional.
func condition(r *http.Request, t state.Table, cols map[string]json.RawMessage) (*state.Condition, error) {
	var cond state.Condition
	set := false
	if vs := r.Header.Values("If-Match"); len(vs) > 0 {
		v := strings.TrimSpace(strings.Join(vs, ","))
		switch {
		case v == "*":
			cond.Exists = true
		case strings.HasPrefix(v, "W/"):
			return nil, invalid("If-Match %s: a weak ETag cannot be compared; send the row's ETag as it was returned", v)
		default:
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(v, `"`), `"`), 10, 64)
			if err != nil || n <= 0 || len(v) < 3 || v[0] != '"' || v[len(v)-1] != '"' {
				return nil, invalid(`If-Match %s: want one ETag of this API ("1700000000000000") or *`, v)
			}
			cond.Version = n
		}
		set = true
	}
	if vs := r.Header.Values("If-None-Match"); len(vs) > 0 {
		if v := strings.TrimSpace(strings.Join(vs, ",")); v != "*" {
			return nil, invalid("If-None-Match %s: only * (the row must not exist) is supported on writes", v)
		}
		if set {
			return nil, invalid("If-Match and If-None-Match cannot be used together")
		}
		cond.Absent = true
		set = true
	}
	if len(cols) > 0 {
		if cond.Absent {
			return nil, invalid(`column conditions ("if") need the row to exist; they cannot go with If-None-Match: *`)
		}
		names := make([]string, 0, len(cols))
		for n := range cols {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			col, ok := t.Column(n)
			if !ok {
				return nil, invalid("if: table %s.%s has no column %q", t.Keyspace, t.Name, n)
			}
			if t.IsKey(n) {
				return nil, invalid("if: column %s is part of the primary key; the path names the row", n)
			}
			v, err := state.ParseJSON(col, cols[n])
			if err != nil {
				return nil, fmt.Errorf("if: %w", err)
			}
			cond.Columns = append(cond.Columns, state.Filter{Column: n, Value: v})
		}
		set = true
	}
	if !set {
		return nil, nil
	}
	return &cond, nil
}

// writeRow serves PUT (MutPut), PATCH (MutUpdate) and DELETE (MutDelete) of a row by its key.
func (s *Server) writeRow(op state.MutationOp) v1Handler {
	return func(w http.ResponseWriter, r *http.Request, c *call) error {
		o, err := s.consistency(r, c)
		if err != nil {
			return err
		}
		var body rowRequest
		if err := s.decodeBody(w, r, &body, op != state.MutDelete); err != nil {
			return err
		}
		switch {
		case op == state.MutDelete && body.Values != nil:
			return invalid("a delete takes no values")
		case op != state.MutDelete && body.Values == nil:
			return invalid(`the body needs "values": an object of column values`)
		}
		ctx, cancel := s.opContext(r, o.wait, o.waitSet)
		defer cancel()
		t, key, err := s.tableAndKey(ctx, r, c, true)
		if err != nil {
			return err
		}
		return s.write(ctx, w, r, c, o, t, key, op, body, http.StatusOK, "")
	}
}

// insertRow serves POST .../rows: the key columns are in the values; otherwise a PUT.
func (s *Server) insertRow(w http.ResponseWriter, r *http.Request, c *call) error {
	o, err := s.consistency(r, c)
	if err != nil {
		return err
	}
	ks := r.PathValue("ks")
	if err := c.p.authorize(ks, true); err != nil {
		return err
	}
	var body rowRequest
	if err := s.decodeBody(w, r, &body, true); err != nil {
		return err
	}
	if body.Values == nil {
		return invalid(`the body needs "values": an object of column values, the primary key's included`)
	}
	ctx, cancel := s.opContext(r, o.wait, o.waitSet)
	defer cancel()
	t, err := s.state.Table(ctx, ks, r.PathValue("table"))
	if err != nil {
		return err
	}
	key, _, err := state.ParseValues(t, body.Values, true)
	if err != nil {
		return err
	}
	for _, k := range t.KeyColumns() {
		delete(body.Values, k)
	}
	loc := "/v1/keyspaces/" + t.Keyspace + "/tables/" + t.Name + "/rows/" + keyPath(t, key)
	return s.write(ctx, w, r, c, o, t, key, state.MutPut, body, http.StatusCreated, loc)
}

// write does one row write and answers with its result (status, and Location if not empty).
func (s *Server) write(ctx context.Context, w http.ResponseWriter, r *http.Request, c *call, o consistencyOpts,
	t state.Table, key journal.Row, op state.MutationOp, body rowRequest, status int, location string) error {
	req := state.WriteRequest{Keyspace: t.Keyspace, Table: t.Name, Key: key, Op: op,
		Consistency: o.c, Lock: o.lock, Wait: o.wait, RequestID: c.reqID}
	if op != state.MutDelete {
		var err error
		if _, req.Values, err = state.ParseValues(t, body.Values, false); err != nil {
			return err
		}
	}
	var err error
	if req.If, err = condition(r, t, body.If); err != nil {
		return err
	}
	done, err := s.admitWrite(t.Keyspace, t.Name, key)
	if err != nil {
		return err
	}
	res, err := s.state.Write(ctx, req)
	if err := done(err); err != nil {
		return err
	}
	w.Header().Set("ETag", etag(res.Version))
	if location != "" {
		w.Header().Set("Location", location)
	}
	writeJSON(w, status, writeResultJSON{Version: res.Version, Stream: res.Stream, Seq: res.Seq})
	return nil
}

// ---- locks ----

// holderJSON is a holder of a key's lock.
type holderJSON struct {
	Ref   state.LockRef `json:"ref"`
	Type  string        `json:"type"`
	Token uint64        `json:"token"`
	Owner string        `json:"owner,omitempty"`
	Lease string        `json:"lease,omitempty"`
}

func holdersJSON(hs []state.LockHolder) []holderJSON {
	out := make([]holderJSON, len(hs))
	for i, h := range hs {
		out[i] = holderJSON{Ref: h.Ref, Type: h.Type, Token: h.Token, Owner: h.Owner}
		if h.Lease > 0 {
			out[i].Lease = h.Lease.String()
		}
	}
	return out
}

type lockRequest struct {
	Lease string `json:"lease"`
	Owner string `json:"owner"`
	Type  string `json:"type"`
}

type lockRefJSON struct {
	Ref state.LockRef `json:"ref"`
}

type grantJSON struct {
	Ref             state.LockRef `json:"ref"`
	Token           uint64        `json:"token"`
	PreviousUnclean bool          `json:"previous_unclean"`
	CaughtUp        int           `json:"caught_up"`
}

func (s *Server) createLock(w http.ResponseWriter, r *http.Request, c *call) error {
	var body lockRequest
	if err := s.decodeBody(w, r, &body, false); err != nil {
		return err
	}
	opts := locks.RefOptions{Type: locks.Write, Lease: defaultLockLease, Owner: body.Owner}
	switch body.Type {
	case "", "write":
	case "read":
		opts.Type = locks.Read
	default:
		return invalid("type %q: want write or read", body.Type)
	}
	if body.Lease != "" {
		d, err := time.ParseDuration(body.Lease)
		if err != nil || d < time.Millisecond || d > locks.MaxLease {
			return invalid("lease %q: want a duration from 1ms to %s", body.Lease, locks.MaxLease)
		}
		opts.Lease = d
	}
	if len(opts.Owner) > 256 {
		return invalid("owner: %d bytes, at most 256", len(opts.Owner))
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	t, key, err := s.tableAndKey(ctx, r, c, opts.Type == locks.Write)
	if err != nil {
		return err
	}
	ref, err := s.state.CreateLock(ctx, t.Keyspace, t.Name, key, opts)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/locks/"+url.PathEscape(string(ref)))
	writeJSON(w, http.StatusCreated, lockRefJSON{ref})
	return nil
}

func (s *Server) lockHolders(w http.ResponseWriter, r *http.Request, c *call) error {
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	t, key, err := s.tableAndKey(ctx, r, c, false)
	if err != nil {
		return err
	}
	hs, err := s.state.LockHolders(ctx, t.Keyspace, t.Name, key)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct {
		Holders []holderJSON `json:"holders"`
	}{holdersJSON(hs)})
	return nil
}

// lockRef reads the lock reference of the path and authorizes the request on its keyspace.
func lockRef(r *http.Request, c *call, write bool) (state.LockRef, error) {
	ref := state.LockRef(r.PathValue("ref"))
	ks := ref.Keyspace()
	if ks == "" {
		return "", invalid("lock reference %q is not one musicd issued", string(ref))
	}
	return ref, c.p.authorize(ks, write)
}

func (s *Server) acquireLock(w http.ResponseWriter, r *http.Request, c *call) error {
	ref, err := lockRef(r, c, false)
	if err != nil {
		return err
	}
	wait, _, err := s.wait(r, c)
	if err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, wait, true)
	defer cancel()
	g, err := s.state.AcquireLock(ctx, ref, wait)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, grantJSON{Ref: g.Ref, Token: g.Token, PreviousUnclean: g.PreviousUnclean, CaughtUp: g.CaughtUp})
	return nil
}

func (s *Server) renewLock(w http.ResponseWriter, r *http.Request, c *call) error {
	ref, err := lockRef(r, c, false)
	if err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	if err := s.state.RenewLock(ctx, ref); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// releaseLock serves DELETE /v1/locks/{ref}: a clean release, or with force=true a forced,
// unclean one (which needs write access).
func (s *Server) releaseLock(w http.ResponseWriter, r *http.Request, c *call) error {
	force := false
	if v := c.query.Get(paramForce); v != "" || c.query.Has(paramForce) {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return invalid("force %q: want true or false", v)
		}
		force = b
	}
	ref, err := lockRef(r, c, force)
	if err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	if force {
		err = s.state.ForceRelease(ctx, ref)
	} else {
		err = s.state.ReleaseLock(ctx, ref)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
