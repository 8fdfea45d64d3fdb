package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/musicd/musicd/state"
)

// The MUSIC v2 compatibility layer: the REST endpoints of ONAP MUSIC's v2 API that existing
// clients call, with MUSIC's bodies, headers and response shape, mapped onto the same State the
// native /v1 API uses. docs/music-v2.md lists every route, the mapping and every deliberate
// difference from MUSIC; TestMusicV2DocListsRoutes keeps that list and musicRoutes in step.
//
// Responses are MUSIC's JsonResponse: {"status": "SUCCESS"|"FAILURE", "message", "error",
// "result": {"row 0": {...}}, "lock": {"lock", "lock-status", "lock-holder", "lock-lease"}}.
// Failures carry MUSIC's statuses (400 for every failed operation, 401 from authentication),
// except 503 when a dependency is down and 413 for a body over api.max_body_bytes.

// musicBase is where MUSIC serves its v2 API (context path /MUSIC/rest, resources under /v2).
const musicBase = "/MUSIC/rest/v2"

// musicVersion is the MUSIC release whose v2 API this layer follows: X-latestVersion, and the
// defaults of X-minorVersion and X-patchVersion when the client sends none.
const (
	musicVersion      = "3.2.40"
	musicMinor        = "2"
	musicPatch        = "40"
	headerMusicMinor  = "X-minorVersion"
	headerMusicPatch  = "X-patchVersion"
	headerMusicLatest = "X-latestVersion"
)

// MUSIC's result statuses.
const (
	musicSuccess = "SUCCESS"
	musicFailure = "FAILURE"
)

// musicResponse is MUSIC's JsonResponse as it serializes: empty fields are left out.
type musicResponse struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
	Version string `json:"version,omitempty"`
	Build   string `json:"build,omitempty"`
	// Result is the rows of a select, {"row 0": {column: value}, ...}; an empty non-nil map is
	// written as {} (MUSIC's select that found nothing).
	Result any        `json:"result,omitempty"`
	Lock   *musicLock `json:"lock,omitempty"`
}

// musicLock is the "lock" object of a response.
type musicLock struct {
	Lock   string `json:"lock"`
	Status string `json:"lock-status,omitempty"`
	// Holder is one lock id (enquire) or a list of them (holders).
	Holder any    `json:"lock-holder,omitempty"`
	Lease  string `json:"lock-lease,omitempty"`
}

// musicHandler serves one v2 route; an error becomes a MUSIC failure through musicStatus.
type musicHandler func(w http.ResponseWriter, r *http.Request, c *call) error

// musicRoute is one route of the v2 layer.
type musicRoute struct {
	pattern string
	h       musicHandler
	// open routes need no credentials (version and health, like the daemon's /version).
	open bool
	// stateless routes work without a State.
	stateless bool
	// queue routes (priorityq) need Deps.Queues rather than a State.
	queue bool
}

// musicRoutes lists the v2 routes. docs/music-v2.md describes exactly these.
func (s *Server) musicRoutes() []musicRoute {
	ks := musicBase + "/keyspaces/{ks}"
	tb := ks + "/tables/{table}"
	lk := musicBase + "/locks"
	return slices.Concat([]musicRoute{
		{pattern: "POST " + ks, h: s.musicCreateKeyspace},
		{pattern: "DELETE " + ks, h: s.musicDropKeyspace},
		{pattern: "POST " + tb, h: s.musicCreateTable},
		{pattern: "DELETE " + tb, h: s.musicDropTable},
		{pattern: "POST " + tb + "/index/{field}", h: s.musicCreateIndex},
		{pattern: "POST " + tb + "/rows", h: s.musicInsert},
		{pattern: "PUT " + tb + "/rows", h: s.musicUpdate},
		{pattern: "DELETE " + tb + "/rows", h: s.musicDelete},
		{pattern: "GET " + tb + "/rows", h: s.musicSelect},
		{pattern: "PUT " + tb + "/rows/criticalget", h: s.musicCriticalGet},

		{pattern: "POST " + lk + "/create/{lock}", h: s.musicCreateLock},
		{pattern: "GET " + lk + "/acquire/{id}", h: s.musicAcquire},
		{pattern: "POST " + lk + "/acquire-with-lease/{id}", h: s.musicAcquireWithLease},
		{pattern: "GET " + lk + "/enquire/{lock}", h: s.musicEnquire},
		{pattern: "GET " + lk + "/holders/{lock}", h: s.musicHolders},
		{pattern: "GET " + lk + "/{lock}", h: s.musicEnquire},
		{pattern: "DELETE " + lk + "/release/{id}", h: s.musicRelease},
		{pattern: "DELETE " + lk + "/delete/{lock}", h: s.musicDeleteLock},

		{pattern: "POST " + musicBase + "/conditional/insert/keyspaces/{ks}/tables/{table}", h: s.musicConditionalInsert},
		{pattern: "PUT " + musicBase + "/conditional/update/keyspaces/{ks}/tables/{table}", h: s.musicConditionalUpdate},
	},
		// musicQ: MUSIC's priority queue over the work queue (musicv2_priorityq.go).
		s.musicPQRoutes(),
		[]musicRoute{
			{pattern: "GET " + musicBase + "/service/pingCassandra/{consistency}", h: s.musicPing, open: true},
			{pattern: "GET " + musicBase + "/service/musicHealthCheck", h: s.musicHealthCheck, open: true, stateless: true},
			{pattern: "GET " + musicBase + "/version", h: s.musicVersion, open: true, stateless: true},
			{pattern: "GET " + musicBase + "/version/build", h: s.musicBuild, open: true, stateless: true},
		})
}

// musicStatus is the HTTP status of a v2 failure with one of errorTable's codes. MUSIC answers
// 400 for every operation that failed (a missing keyspace, an existing table, a lock not held, a
// condition not met, a lock not granted), and 401 from its authentication filter whether the
// credentials are unknown or not allowed; musicd keeps those, and answers 503 (MUSIC: 400 or
// 500) when a dependency is down, so that clients and load balancers can retry.
func musicStatus(code string) int {
	switch code {
	case codeInvalid, codeNotFound, codeExists, codeNotHolder, codeNotOwner, codeConditionFailed, codeLocked:
		return http.StatusBadRequest
	case codeUnauthenticated, codeForbidden:
		return http.StatusUnauthorized
	case codeBodyTooLarge:
		return http.StatusRequestEntityTooLarge
	case codeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case codeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

var musicDigitsRE = regexp.MustCompile(`^[0-9]{1,9}$`)

// setMusicVersionHeaders echoes the client's X-minorVersion and X-patchVersion (MUSIC's
// defaults when it sends none, or something that is not a number) and names the MUSIC version
// followed in X-latestVersion.
func setMusicVersionHeaders(w http.ResponseWriter, r *http.Request) {
	minor, patch := r.Header.Get(headerMusicMinor), r.Header.Get(headerMusicPatch)
	if !musicDigitsRE.MatchString(minor) {
		minor = musicMinor
	}
	if !musicDigitsRE.MatchString(patch) {
		patch = musicPatch
	}
	w.Header().Set(headerMusicMinor, minor)
	w.Header().Set(headerMusicPatch, patch)
	w.Header().Set(headerMusicLatest, musicVersion)
}

// serveMusic adapts a v2 route's handler: version headers, request id, authentication, query
// parsing, the State check, and MUSIC's failure shape for errors.
func (s *Server) serveMusic(rt musicRoute) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		setMusicVersionHeaders(w, r)
		c := newCall(w, r)
		err := func() error {
			if err := c.checkID(w); err != nil {
				return err
			}
			if !rt.open {
				p, err := s.auth.authenticateMusic(r)
				if err != nil {
					return err
				}
				c.p = p
			}
			var err error
			c.query, err = parseQuery(r, true, nil) // MUSIC's filters are query parameters
			if err != nil {
				return err
			}
			return s.dispatch(rt.queue, rt.stateless, func() error { return rt.h(w, r, c) })
		}()
		if err == nil {
			return
		}
		e := toAPIError(err)
		s.logFailure("MUSIC v2", r, c, rt.pattern, e)
		writeMusicError(w, e)
	}
}

// writeMusicError writes e in MUSIC's shape with MUSIC's status for its code.
func writeMusicError(w http.ResponseWriter, e *apiError) {
	status := musicStatus(e.code)
	if status == http.StatusUnauthorized {
		v := `Basic realm="musicd"`
		if e.invalidToken {
			v += `, error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", v)
	}
	msg := e.msg
	if e.code == codeLocked {
		msg = "the key's lock stayed held by another lock reference until the wait ended"
	}
	writeJSON(w, status, musicResponse{Status: musicFailure, Error: msg})
}

// musicNotServed answers the paths under /MUSIC/rest that no v2 route serves: 405 with Allow
// when the path exists with other methods, else 404, in MUSIC's shape.
func musicNotServed(mux *http.ServeMux) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		setMusicVersionHeaders(w, r)
		setRequestID(w, r)
		if methods := allowedMethods(mux, r); len(methods) > 0 {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			writeJSON(w, http.StatusMethodNotAllowed, musicResponse{Status: musicFailure, Error: r.Method + " is not allowed on " + r.URL.Path})
			return
		}
		writeJSON(w, http.StatusNotFound, musicResponse{Status: musicFailure, Error: "no such MUSIC v2 endpoint: " + r.Method + " " + r.URL.Path})
	}
}

// setRequestID gives the answer of a path no route serves the request's id, when it is valid.
func setRequestID(w http.ResponseWriter, r *http.Request) {
	if id := requestID(r); validRequestID(id) {
		w.Header().Set(headerRequestID, id)
	}
}

// musicOK writes a success.
func musicOK(w http.ResponseWriter, resp musicResponse) error {
	resp.Status = musicSuccess
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// musicName reads an identifier of the path. CQL folds unquoted names to lower case, and MUSIC
// wrote its statements unquoted, so "Employees" named the table employees: so here.
func musicName(r *http.Request, name string) string { return strings.ToLower(r.PathValue(name)) }

// decodeMusic reads a v2 body: unknown fields are ignored, as MUSIC's model classes do.
func (s *Server) decodeMusic(w http.ResponseWriter, r *http.Request, dst any, required bool) error {
	return s.decodeBodyWith(w, r, dst, required, false)
}

// ---- keyspaces, tables, index ----

// musicKeyspaceBody is MUSIC's JsonKeySpace. durabilityOfWrites and consistencyInfo are
// accepted and not used (schema changes are not made under a lock).
type musicKeyspaceBody struct {
	ReplicationInfo map[string]json.RawMessage `json:"replicationInfo"`
}

// musicBodyMissing is MUSIC's ResultType.BODYMISSING message.
const musicBodyMissing = "Incomplete Request body. Please correct your input request and retry."

func (s *Server) musicCreateKeyspace(w http.ResponseWriter, r *http.Request, c *call) error {
	name := musicName(r, "ks")
	if err := c.p.authorize(name, true); err != nil {
		return err
	}
	var body musicKeyspaceBody
	if err := s.decodeMusic(w, r, &body, false); err != nil {
		return err
	}
	if body.ReplicationInfo == nil {
		return invalid("%s (replicationInfo is missing)", musicBodyMissing)
	}
	ks := state.Keyspace{Name: name}
	var err error
	if ks.Replication, err = musicReplication(body.ReplicationInfo); err != nil {
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
	return musicOK(w, musicResponse{Message: "Keyspace " + name + " Created"})
}

// musicReplication maps replicationInfo: NetworkTopologyStrategy's data centers and factors
// become the keyspace's replication; SimpleStrategy (no data centers) takes the daemon's default
// replication, its replication_factor checked but not used.
func musicReplication(info map[string]json.RawMessage) (map[string]int, error) {
	var class string
	if err := json.Unmarshal(info["class"], &class); err != nil || class == "" {
		return nil, invalid(`replicationInfo needs "class": SimpleStrategy or NetworkTopologyStrategy`)
	}
	class = class[strings.LastIndex(class, ".")+1:] // org.apache.cassandra.locator.SimpleStrategy
	factor := func(k string) (int, error) {
		s := strings.Trim(string(info[k]), `" `)
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > state.MaxReplicas {
			return 0, invalid("replicationInfo.%s %s: want a replica count from 1 to %d", k, info[k], state.MaxReplicas)
		}
		return n, nil
	}
	switch class {
	case "SimpleStrategy":
		if _, err := factor("replication_factor"); err != nil {
			return nil, err
		}
		return nil, nil
	case "NetworkTopologyStrategy":
		out := map[string]int{}
		for k := range info {
			if k == "class" {
				continue
			}
			n, err := factor(k)
			if err != nil {
				return nil, err
			}
			out[k] = n
		}
		if len(out) == 0 {
			return nil, invalid("replicationInfo: NetworkTopologyStrategy needs a replica count per data center")
		}
		return out, nil
	}
	return nil, invalid("replicationInfo.class %q: want SimpleStrategy or NetworkTopologyStrategy", class)
}

func (s *Server) musicDropKeyspace(w http.ResponseWriter, r *http.Request, c *call) error {
	name := musicName(r, "ks")
	if err := c.p.authorize(name, true); err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	if err := s.state.DropKeyspace(ctx, name); err != nil {
		return err
	}
	return musicOK(w, musicResponse{Message: "Keyspace " + name + " Deleted"})
}

// musicTableBody is MUSIC's JsonTable. properties (Cassandra table options), filteringKey and
// consistencyInfo are accepted and not used.
type musicTableBody struct {
	Fields          json.RawMessage `json:"fields"`
	PrimaryKey      string          `json:"primaryKey"`
	PartitionKey    string          `json:"partitionKey"`
	ClusteringKey   string          `json:"clusteringKey"`
	ClusteringOrder string          `json:"clusteringOrder"`
}

func (s *Server) musicCreateTable(w http.ResponseWriter, r *http.Request, c *call) error {
	ks, name := musicName(r, "ks"), musicName(r, "table")
	if err := c.p.authorize(ks, true); err != nil {
		return err
	}
	var body musicTableBody
	if err := s.decodeMusic(w, r, &body, true); err != nil {
		return err
	}
	if len(body.Fields) == 0 {
		return invalid("%s (fields is missing)", musicBodyMissing)
	}
	t, err := musicTable(ks, name, body)
	if err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	if err := s.state.CreateTable(ctx, t); err != nil {
		return err
	}
	return musicOK(w, musicResponse{Message: "TableName " + name + " Created under keyspace " + ks})
}

// musicTable builds a table from MUSIC's fields (column name to CQL type, in the body's order,
// and "PRIMARY KEY": "(...)") or its primaryKey / partitionKey and clusteringKey.
func musicTable(ks, name string, body musicTableBody) (state.Table, error) {
	t := state.Table{Keyspace: ks, Name: name}
	fields, err := orderedStrings(body.Fields)
	if err != nil {
		return t, err
	}
	pk := body.PrimaryKey
	for _, f := range fields {
		if strings.EqualFold(strings.Join(strings.Fields(f[0]), " "), "PRIMARY KEY") {
			pk = f[1]
			continue
		}
		typ, err := musicType(f[0], f[1])
		if err != nil {
			return t, err
		}
		t.Columns = append(t.Columns, state.Column{Name: strings.ToLower(f[0]), Type: typ})
	}
	switch {
	case strings.TrimSpace(pk) != "":
		if t.PartitionKey, t.Clustering, err = parsePrimaryKey(pk); err != nil {
			return t, err
		}
	case strings.TrimSpace(body.PartitionKey) != "":
		t.PartitionKey = splitNames(body.PartitionKey)
		t.Clustering = splitNames(body.ClusteringKey)
	default:
		return t, invalid(`the table needs a primary key: "PRIMARY KEY": "(column)" in fields, or primaryKey`)
	}
	for _, part := range strings.Split(body.ClusteringOrder, ",") {
		if f := strings.Fields(part); len(f) == 2 && strings.EqualFold(f[1], "DESC") {
			return t, invalid("clusteringOrder %q: descending clustering order is not supported; rows sort ascending", body.ClusteringOrder)
		}
	}
	return t, t.Validate()
}

// musicType maps a CQL type name of MUSIC's fields to a column type: the types of state.Types,
// varchar as text and varint as bigint (64 bits).
func musicType(field, cql string) (state.Type, error) {
	switch typ := strings.ToLower(strings.TrimSpace(cql)); typ {
	case "varchar":
		return state.Text, nil
	case "varint":
		return state.Bigint, nil
	default:
		for _, k := range state.Types {
			if string(k) == typ {
				return k, nil
			}
		}
	}
	names := make([]string, len(state.Types))
	for i, k := range state.Types {
		names[i] = string(k)
	}
	return "", invalid("fields.%s: type %q is not supported; musicd columns are %s (varchar is text, varint is bigint)", field, cql, strings.Join(names, ", "))
}

// parsePrimaryKey parses a CQL primary key: "(a)", "a", "(a, b)" (partition a, clustering b),
// "((a, b), c)" (partition a and b, clustering c).
func parsePrimaryKey(pk string) (partition, clustering []string, err error) {
	s := strings.TrimSpace(pk)
	if strings.HasPrefix(s, "(") && matchingParen(s, 0) == len(s)-1 {
		s = strings.TrimSpace(s[1 : len(s)-1])
	}
	if strings.HasPrefix(s, "(") {
		end := matchingParen(s, 0)
		if end < 0 {
			return nil, nil, invalid("PRIMARY KEY %q: unbalanced parentheses", pk)
		}
		partition = splitNames(s[1:end])
		rest := strings.TrimSpace(s[end+1:])
		if rest != "" {
			if !strings.HasPrefix(rest, ",") {
				return nil, nil, invalid("PRIMARY KEY %q: want ((partition columns), clustering columns)", pk)
			}
			clustering = splitNames(rest[1:])
		}
	} else {
		names := splitNames(s)
		if len(names) > 0 {
			partition, clustering = names[:1], names[1:]
		}
	}
	if len(partition) == 0 || strings.ContainsAny(strings.Join(append(slices.Clone(partition), clustering...), ""), "()") {
		return nil, nil, invalid("PRIMARY KEY %q: want (column), (partition, clustering...) or ((partition...), clustering...)", pk)
	}
	return partition, clustering, nil
}

// matchingParen returns the index of the parenthesis closing the one at i, or -1.
func matchingParen(s string, i int) int {
	depth := 0
	for j := i; j < len(s); j++ {
		switch s[j] {
		case '(':
			depth++
		case ')':
			if depth--; depth == 0 {
				return j
			}
		}
	}
	return -1
}

// splitNames splits a comma-separated list of column names (lower-cased; empty items dropped).
func splitNames(s string) []string {
	var out []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.ToLower(strings.TrimSpace(n)); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// orderedStrings reads a JSON object whose values are strings, keeping the members' order.
func orderedStrings(raw json.RawMessage) ([][2]string, error) {
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, invalid("fields: want an object of column names to CQL types")
	}
	var out [][2]string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil, invalid("fields: %v", err)
		}
		var v string
		if err := dec.Decode(&v); err != nil {
			return nil, invalid("fields.%v: want a CQL type name as a string", k)
		}
		out = append(out, [2]string{k.(string), v})
	}
	return out, nil
}

func (s *Server) musicDropTable(w http.ResponseWriter, r *http.Request, c *call) error {
	ks := musicName(r, "ks")
	if err := c.p.authorize(ks, true); err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	if err := s.state.DropTable(ctx, ks, musicName(r, "table")); err != nil {
		return err
	}
	return musicOK(w, musicResponse{})
}

// musicCreateIndex answers MUSIC's index creation after checking that the column exists. No
// index is built: a select filters on any column without one (see docs/music-v2.md).
func (s *Server) musicCreateIndex(w http.ResponseWriter, r *http.Request, c *call) error {
	ks, table, field := musicName(r, "ks"), musicName(r, "table"), musicName(r, "field")
	if err := c.p.authorize(ks, true); err != nil {
		return err
	}
	for name := range c.query {
		if name != "index_name" {
			return invalid("unknown query parameter %q (this endpoint takes index_name)", name)
		}
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	t, err := s.state.Table(ctx, ks, table)
	if err != nil {
		return err
	}
	if _, ok := t.Column(field); !ok {
		return invalid("table %s.%s has no column %q", ks, table, field)
	}
	return musicOK(w, musicResponse{Message: "Index Created on " + ks + "." + table + "." + field})
}

// ---- service, version ----

// musicConsistencyLevels are the names MUSIC's pingCassandra takes (Cassandra's consistency
// levels).
func musicConsistencyLevel(s string) bool {
	switch strings.ToUpper(s) {
	case "ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "SERIAL", "LOCAL_SERIAL", "LOCAL_ONE":
		return true
	}
	return false
}

const (
	musicActive   = "Cassandra Running and Listening to requests"
	musicInactive = "One or more nodes in the Cluster is/are down or not responding."
)

// musicStoreUp asks the keyed state's store a real question (the list of keyspaces) within
// CheckTimeout: Cassandra in distributed mode, the embedded store otherwise.
func (s *Server) musicStoreUp(ctx context.Context) bool {
	if s.state == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CheckTimeout)
	defer cancel()
	_, err := s.state.Keyspaces(ctx)
	return err == nil
}

// musicPing serves pingCassandra: MUSIC's map {status, message, ACTIVE|INACTIVE|INVALID}. The
// consistency level is checked and not used.
func (s *Server) musicPing(w http.ResponseWriter, r *http.Request, _ *call) error {
	if !musicConsistencyLevel(r.PathValue("consistency")) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"status": "INVALID", "message": "Consistency level is invalid...", "INVALID": "INVALID"})
		return nil
	}
	if !s.musicStoreUp(r.Context()) {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "INACTIVE", "message": musicInactive, "INACTIVE": musicInactive})
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ACTIVE", "message": musicActive, "ACTIVE": musicActive})
	return nil
}

// musicHealthCheck serves musicHealthCheck: always 200, with the store's state.
func (s *Server) musicHealthCheck(w http.ResponseWriter, r *http.Request, _ *call) error {
	cass := "Inactive"
	if s.musicStoreUp(r.Context()) {
		cass = "Active"
	}
	writeJSON(w, http.StatusOK, map[string]string{"MUSIC": "Active", "Cassandra": cass})
	return nil
}

func (s *Server) musicVersion(w http.ResponseWriter, _ *http.Request, _ *call) error {
	return musicOK(w, musicResponse{Version: "MUSIC:" + musicVersion})
}

func (s *Server) musicBuild(w http.ResponseWriter, _ *http.Request, _ *call) error {
	return musicOK(w, musicResponse{Version: "MUSIC:" + musicVersion,
		Build: fmt.Sprintf("MUSIC:%s-musicd-%s", musicVersion, s.deps.Build.Version)})
}
