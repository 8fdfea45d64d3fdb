package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
	"github.com/musicd/musicd/state"
)

var update = flag.Bool("update", false, "rewrite docs/api.md from the OpenAPI document")

// ---- a fake State: pure logic, enough to exercise the handlers ----

// fakeState keeps keyspaces, tables and rows in memory and records the last request of each
// kind. fail[method] makes that method return the error instead.
type fakeState struct {
	mu struct {
		sync.Mutex
		keyspaces map[string]state.Keyspace
		tables    map[string]state.Table     // ks.table
		rows      map[string]state.StoredRow // ks.table/key
		version   int64
		locks     map[string][]state.LockHolder // lock name -> queue
		nextRef   int

		lastWrite   state.WriteRequest
		lastRead    state.ReadRequest
		lastQuery   state.Query
		lastCons    state.Consistency
		lastLockOpt locks.RefOptions
		lastWait    time.Duration
		calls       []string
	}
	fail map[string]error
	// block makes the named method wait for its context to end.
	block string
}

func newFakeState() *fakeState {
	f := &fakeState{fail: map[string]error{}}
	f.mu.keyspaces = map[string]state.Keyspace{}
	f.mu.tables = map[string]state.Table{}
	f.mu.rows = map[string]state.StoredRow{}
	f.mu.locks = map[string][]state.LockHolder{}
	f.mu.version = 1000
	return f
}

var _ State = (*fakeState)(nil)

// enter records a call and returns the injected error, if any.
func (f *fakeState) enter(ctx context.Context, method string) error {
	f.mu.Lock()
	f.mu.calls = append(f.mu.calls, method)
	f.mu.Unlock()
	if f.block == method {
		<-ctx.Done()
		return fmt.Errorf("fake %s: %w", method, ctx.Err())
	}
	return f.fail[method]
}

func (f *fakeState) called(method string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.mu.calls, method)
}

func keyString(key journal.Row) string {
	var b strings.Builder
	for _, fl := range key {
		fmt.Fprintf(&b, "/%s=%d:%q%d%v%x", fl.Name, fl.Value.Kind, fl.Value.Str, fl.Value.Int, fl.Value.Float, fl.Value.Bytes)
	}
	return b.String()
}

func (f *fakeState) CreateKeyspace(ctx context.Context, ks state.Keyspace) error {
	if err := f.enter(ctx, "CreateKeyspace"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mu.keyspaces[ks.Name]; ok {
		return fmt.Errorf("keyspace %s: %w", ks.Name, state.ErrExists)
	}
	f.mu.keyspaces[ks.Name] = ks
	return nil
}

func (f *fakeState) DropKeyspace(ctx context.Context, name string) error {
	if err := f.enter(ctx, "DropKeyspace"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mu.keyspaces[name]; !ok {
		return fmt.Errorf("keyspace %s: %w", name, state.ErrNotFound)
	}
	delete(f.mu.keyspaces, name)
	return nil
}

func (f *fakeState) Keyspaces(ctx context.Context) ([]state.Keyspace, error) {
	if err := f.enter(ctx, "Keyspaces"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []state.Keyspace
	for _, ks := range f.mu.keyspaces {
		out = append(out, ks)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (f *fakeState) Keyspace(ctx context.Context, name string) (state.Keyspace, error) {
	if err := f.enter(ctx, "Keyspace"); err != nil {
		return state.Keyspace{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ks, ok := f.mu.keyspaces[name]
	if !ok {
		return ks, fmt.Errorf("keyspace %s: %w", name, state.ErrNotFound)
	}
	return ks, nil
}

func (f *fakeState) CreateTable(ctx context.Context, t state.Table) error {
	if err := f.enter(ctx, "CreateTable"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mu.keyspaces[t.Keyspace]; !ok {
		return fmt.Errorf("keyspace %s: %w", t.Keyspace, state.ErrNotFound)
	}
	if _, ok := f.mu.tables[t.Keyspace+"."+t.Name]; ok {
		return fmt.Errorf("table %s: %w", t.Name, state.ErrExists)
	}
	f.mu.tables[t.Keyspace+"."+t.Name] = t
	return nil
}

func (f *fakeState) DropTable(ctx context.Context, keyspace, name string) error {
	if err := f.enter(ctx, "DropTable"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mu.tables[keyspace+"."+name]; !ok {
		return fmt.Errorf("table %s.%s: %w", keyspace, name, state.ErrNotFound)
	}
	delete(f.mu.tables, keyspace+"."+name)
	return nil
}

func (f *fakeState) Tables(ctx context.Context, keyspace string) ([]state.Table, error) {
	if err := f.enter(ctx, "Tables"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.mu.keyspaces[keyspace]; !ok {
		return nil, fmt.Errorf("keyspace %s: %w", keyspace, state.ErrNotFound)
	}
	var out []state.Table
	for _, t := range f.mu.tables {
		if t.Keyspace == keyspace {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (f *fakeState) Table(ctx context.Context, keyspace, name string) (state.Table, error) {
	if err := f.enter(ctx, "Table"); err != nil {
		return state.Table{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.mu.tables[keyspace+"."+name]
	if !ok {
		return t, fmt.Errorf("table %s.%s: %w", keyspace, name, state.ErrNotFound)
	}
	return t, nil
}

func (f *fakeState) Write(ctx context.Context, req state.WriteRequest) (state.WriteResult, error) {
	if err := f.enter(ctx, "Write"); err != nil {
		return state.WriteResult{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mu.lastWrite = req
	t, ok := f.mu.tables[req.Keyspace+"."+req.Table]
	if !ok {
		return state.WriteResult{}, state.ErrNotFound
	}
	id := req.Keyspace + "." + req.Table + keyString(req.Key)
	if req.Consistency == state.Critical {
		hs := f.mu.locks[lockName(req.Keyspace, req.Table, req.Key)]
		if len(hs) == 0 || hs[0].Ref != req.Lock || hs[0].Token == 0 {
			return state.WriteResult{}, fmt.Errorf("key %s: %w", id, state.ErrNotHolder)
		}
	}
	old, exists := f.mu.rows[id]
	if c := req.If; c != nil {
		ok := true
		switch {
		case c.Absent && exists, c.Exists && !exists, c.Version != 0 && (!exists || old.Version != c.Version):
			ok = false
		}
		for _, cc := range c.Columns {
			if !exists {
				ok = false
				break
			}
			for _, fl := range old.Values {
				if fl.Name == cc.Column && state.CompareValues(fl.Value, cc.Value) != 0 {
					ok = false
				}
			}
		}
		if !ok {
			return state.WriteResult{}, fmt.Errorf("key %s: %w", id, state.ErrConditionFailed)
		}
	}
	f.mu.version++
	switch req.Op {
	case state.MutDelete:
		delete(f.mu.rows, id)
	default:
		given := map[string]journal.Value{}
		for _, fl := range req.Values {
			given[fl.Name] = fl.Value
		}
		var vals journal.Row
		for _, col := range t.Columns {
			v := journal.Null()
			if k := slices.IndexFunc(req.Key, func(x journal.Field) bool { return x.Name == col.Name }); k >= 0 {
				v = req.Key[k].Value
			} else if g, ok := given[col.Name]; ok {
				v = g
			} else if req.Op == state.MutUpdate && exists {
				for _, fl := range old.Values {
					if fl.Name == col.Name {
						v = fl.Value
					}
				}
			}
			vals = append(vals, journal.Field{Name: col.Name, Value: v})
		}
		f.mu.rows[id] = state.StoredRow{Values: vals, Version: f.mu.version}
	}
	return state.WriteResult{Version: f.mu.version, Stream: "key/" + id, Seq: uint64(f.mu.version - 1000)}, nil
}

func (f *fakeState) Read(ctx context.Context, req state.ReadRequest) (state.StoredRow, error) {
	if err := f.enter(ctx, "Read"); err != nil {
		return state.StoredRow{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mu.lastRead = req
	row, ok := f.mu.rows[req.Keyspace+"."+req.Table+keyString(req.Key)]
	if !ok {
		return row, fmt.Errorf("row: %w", state.ErrNotFound)
	}
	return row, nil
}

func (f *fakeState) Select(ctx context.Context, keyspace, table string, q state.Query, c state.Consistency) (state.Page, error) {
	if err := f.enter(ctx, "Select"); err != nil {
		return state.Page{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mu.lastQuery, f.mu.lastCons = q, c
	prefix := keyspace + "." + table + "/"
	var ids []string
	for id := range f.mu.rows {
		if strings.HasPrefix(id, prefix) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	var match []state.StoredRow
	for _, id := range ids {
		row := f.mu.rows[id]
		ok := true
		for _, flt := range q.Filters {
			for _, fl := range row.Values {
				if fl.Name == flt.Column && state.CompareValues(fl.Value, flt.Value) != 0 {
					ok = false
				}
			}
		}
		if ok {
			match = append(match, row)
		}
	}
	start := 0
	if q.Page != "" {
		n, err := strconv.Atoi(q.Page)
		if err != nil || n < 0 || n > len(match) {
			return state.Page{}, fmt.Errorf("%w: page token %q", state.ErrInvalid, q.Page)
		}
		start = n
	}
	end := min(start+q.Limit, len(match))
	p := state.Page{Rows: match[start:end]}
	if end < len(match) {
		p.Next = strconv.Itoa(end)
	}
	return p, nil
}

func lockName(ks, table string, key journal.Row) string {
	return fmt.Sprintf("kv.%s.%s.k%x", ks, table, keyString(key))
}

func (f *fakeState) CreateLock(ctx context.Context, keyspace, table string, key journal.Row, opts locks.RefOptions) (state.LockRef, error) {
	if err := f.enter(ctx, "CreateLock"); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mu.lastLockOpt = opts
	f.mu.nextRef++
	name := lockName(keyspace, table, key)
	ref := state.LockRef(fmt.Sprintf("%s~%d", name, f.mu.nextRef))
	f.mu.locks[name] = append(f.mu.locks[name], state.LockHolder{Ref: ref, Type: opts.Type.String(), Owner: opts.Owner, Lease: opts.Lease})
	return ref, nil
}

func refLockName(ref state.LockRef) string {
	name, _, _ := strings.Cut(string(ref), "~")
	return name
}

func (f *fakeState) AcquireLock(ctx context.Context, ref state.LockRef, wait time.Duration) (state.LockGrant, error) {
	if err := f.enter(ctx, "AcquireLock"); err != nil {
		return state.LockGrant{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mu.lastWait = wait
	q := f.mu.locks[refLockName(ref)]
	i := slices.IndexFunc(q, func(h state.LockHolder) bool { return h.Ref == ref })
	switch {
	case i < 0:
		return state.LockGrant{}, fmt.Errorf("ref %s: %w", ref, state.ErrNotFound)
	case i > 0:
		return state.LockGrant{}, &state.LockedError{Holders: []state.LockHolder{q[0]}}
	}
	if q[0].Token == 0 {
		f.mu.version++
		q[0].Token = uint64(f.mu.version)
	}
	return state.LockGrant{Ref: ref, Token: q[0].Token, PreviousUnclean: true, CaughtUp: 2}, nil
}

func (f *fakeState) removeRef(ref state.LockRef) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	q := f.mu.locks[refLockName(ref)]
	i := slices.IndexFunc(q, func(h state.LockHolder) bool { return h.Ref == ref })
	if i < 0 {
		return fmt.Errorf("ref %s: %w", ref, state.ErrNotFound)
	}
	f.mu.locks[refLockName(ref)] = slices.Delete(q, i, i+1)
	return nil
}

func (f *fakeState) ReleaseLock(ctx context.Context, ref state.LockRef) error {
	if err := f.enter(ctx, "ReleaseLock"); err != nil {
		return err
	}
	return f.removeRef(ref)
}

func (f *fakeState) RenewLock(ctx context.Context, ref state.LockRef) error {
	if err := f.enter(ctx, "RenewLock"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.ContainsFunc(f.mu.locks[refLockName(ref)], func(h state.LockHolder) bool { return h.Ref == ref }) {
		return fmt.Errorf("ref %s: %w", ref, state.ErrNotFound)
	}
	return nil
}

func (f *fakeState) ForceRelease(ctx context.Context, ref state.LockRef) error {
	if err := f.enter(ctx, "ForceRelease"); err != nil {
		return err
	}
	return f.removeRef(ref)
}

func (f *fakeState) LockHolders(ctx context.Context, keyspace, table string, key journal.Row) ([]state.LockHolder, error) {
	if err := f.enter(ctx, "LockHolders"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []state.LockHolder
	for _, h := range f.mu.locks[lockName(keyspace, table, key)] {
		if h.Token != 0 {
			out = append(out, h)
		}
	}
	return out, nil
}

// ---- helpers ----

// v1Env is a server on a fake State with a keyspace "ks" and tables:
// ks.users (name text) -> age int, email text;
// ks.events (owner text, year int) -> note text, data blob.
type v1Env struct {
	s    *Server
	h    http.Handler
	st   *fakeState
	logs *bytes.Buffer
}

func newV1Env(t testing.TB, mutate ...func(*Config)) *v1Env {
	t.Helper()
	cfg := DefaultConfig()
	for _, m := range mutate {
		m(&cfg)
	}
	st := newFakeState()
	st.mu.keyspaces["ks"] = state.Keyspace{Name: "ks", Replication: map[string]int{"dc1": 3}}
	st.mu.keyspaces["other"] = state.Keyspace{Name: "other"}
	st.mu.tables["ks.users"] = state.Table{Keyspace: "ks", Name: "users",
		Columns:      []state.Column{{Name: "name", Type: state.Text}, {Name: "age", Type: state.Int}, {Name: "email", Type: state.Text}},
		PartitionKey: []string{"name"}}
	st.mu.tables["ks.events"] = state.Table{Keyspace: "ks", Name: "events",
		Columns:      []state.Column{{Name: "owner", Type: state.Text}, {Name: "year", Type: state.Int}, {Name: "note", Type: state.Text}, {Name: "data", Type: state.Blob}},
		PartitionKey: []string{"owner"}, Clustering: []string{"year"}}
	st.mu.tables["other.users"] = state.Table{Keyspace: "other", Name: "users",
		Columns:      []state.Column{{Name: "name", Type: state.Text}, {Name: "age", Type: state.Int}},
		PartitionKey: []string{"name"}}
	logs := &bytes.Buffer{}
	s, err := NewServer(cfg, Deps{
		Logger:   slog.New(slog.NewTextHandler(&lockedWriter{w: logs}, nil)),
		Registry: prometheus.NewRegistry(),
		Build:    BuildInfo{Version: "v-test"},
		State:    st,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &v1Env{s: s, h: s.Handler(), st: st, logs: logs}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// resp is a recorded response.
type resp struct {
	code int
	hdr  http.Header
	body string
}

// errCode returns the code of an error body ("" if the body is not one).
func (r resp) errCode() string {
	var e errorBody
	_ = json.Unmarshal([]byte(r.body), &e)
	return e.Code
}

// msg returns the message of an error body.
func (r resp) msg() string {
	var e errorBody
	_ = json.Unmarshal([]byte(r.body), &e)
	return e.Message
}

func (r resp) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.body), v); err != nil {
		t.Fatalf("decoding %q: %v", r.body, err)
	}
}

// call makes a request; headers are name, value pairs.
func (e *v1Env) call(method, path, body string, headers ...string) resp {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return resp{rec.Code, rec.Header(), rec.Body.String()}
}

func expect(t *testing.T, what string, r resp, code int, errCode string) {
	t.Helper()
	if r.code != code || (errCode != "" && r.errCode() != errCode) {
		t.Errorf("%s: got %d %s, want %d %s", what, r.code, strings.TrimSpace(r.body), code, errCode)
	}
	if r.code >= 400 && r.errCode() == "" {
		t.Errorf("%s: error %d without a JSON error body: %q", what, r.code, r.body)
	}
	if r.code != http.StatusNoContent && r.hdr.Get("Content-Type") != "application/json" {
		t.Errorf("%s: Content-Type %q", what, r.hdr.Get("Content-Type"))
	}
}

// ---- keyspaces and tables ----

func TestV1Keyspaces(t *testing.T) {
	e := newV1Env(t)
	r := e.call("GET", "/v1/keyspaces", "")
	expect(t, "list", r, 200, "")
	var list struct{ Keyspaces []state.Keyspace }
	r.decode(t, &list)
	if len(list.Keyspaces) != 2 || list.Keyspaces[0].Name != "ks" || list.Keyspaces[0].Replication["dc1"] != 3 {
		t.Errorf("list: %+v", list)
	}

	r = e.call("POST", "/v1/keyspaces", `{"name":"shop","replication":{"dc1":3,"dc2":2}}`)
	expect(t, "create", r, 201, "")
	var ks state.Keyspace
	r.decode(t, &ks)
	if ks.Name != "shop" || ks.Replication["dc2"] != 2 || r.hdr.Get("Location") != "/v1/keyspaces/shop" {
		t.Errorf("create: %+v, Location %q", ks, r.hdr.Get("Location"))
	}
	expect(t, "create again", e.call("POST", "/v1/keyspaces", `{"name":"shop"}`), 409, codeExists)
	expect(t, "get", e.call("GET", "/v1/keyspaces/shop", ""), 200, "")
	expect(t, "drop", e.call("DELETE", "/v1/keyspaces/shop", ""), 204, "")
	expect(t, "get dropped", e.call("GET", "/v1/keyspaces/shop", ""), 404, codeNotFound)
	expect(t, "drop missing", e.call("DELETE", "/v1/keyspaces/shop", ""), 404, codeNotFound)

	// Bad input: 400 with a message that names the problem, and nothing reaches the state.
	for _, tc := range []struct{ body, want string }{
		{`{"name":"Bad-Name"}`, "Bad-Name"},
		{`{"name":"music_x"}`, "reserved"},
		{`{"name":"x","replication":{"dc1":0}}`, "replicas"},
		{`{"name":"x","replicas":3}`, `unknown field "replicas"`},
		{`{"name":7}`, `field "name": want a string`},
		{`{"name":"x","replication":{"dc1":"three"}}`, `field "replication": want an integer`},
		{`{"name":"x",}`, "not valid JSON"},
		{`{"name":"x"`, "ends early"},
		{`{"name":"x"} {"name":"y"}`, "after the JSON object"},
		{`["x"]`, "want a JSON object"},
		{``, "needs a JSON body"},
	} {
		r := e.call("POST", "/v1/keyspaces", tc.body)
		expect(t, "create "+tc.body, r, 400, codeInvalid)
		var eb errorBody
		r.decode(t, &eb)
		if !strings.Contains(eb.Message, tc.want) {
			t.Errorf("create %s: message %q lacks %q", tc.body, eb.Message, tc.want)
		}
	}
	if e.st.called("CreateKeyspace") && len(e.st.mu.keyspaces) != 2 {
		t.Errorf("bad input reached the state: %v", e.st.mu.keyspaces)
	}
}

func TestV1Tables(t *testing.T) {
	e := newV1Env(t)
	r := e.call("GET", "/v1/keyspaces/ks/tables", "")
	expect(t, "list", r, 200, "")
	var list struct{ Tables []state.Table }
	r.decode(t, &list)
	if len(list.Tables) != 2 || list.Tables[0].Name != "events" || list.Tables[0].Clustering[0] != "year" {
		t.Errorf("list: %+v", list)
	}
	r = e.call("GET", "/v1/keyspaces/other/tables", "")
	expect(t, "list other", r, 200, "")
	expect(t, "list missing keyspace", e.call("GET", "/v1/keyspaces/nope/tables", ""), 404, codeNotFound)

	body := `{"name":"carts","columns":[{"name":"id","type":"uuid"},{"name":"total","type":"decimal"}],"partition_key":["id"]}`
	r = e.call("POST", "/v1/keyspaces/ks/tables", body)
	expect(t, "create", r, 201, "")
	var tb state.Table
	r.decode(t, &tb)
	if tb.Keyspace != "ks" || tb.Name != "carts" || len(tb.Columns) != 2 || r.hdr.Get("Location") != "/v1/keyspaces/ks/tables/carts" {
		t.Errorf("create: %+v %q", tb, r.hdr.Get("Location"))
	}
	expect(t, "create again", e.call("POST", "/v1/keyspaces/ks/tables", body), 409, codeExists)
	expect(t, "create in missing keyspace", e.call("POST", "/v1/keyspaces/nope/tables", body), 404, codeNotFound)
	expect(t, "get", e.call("GET", "/v1/keyspaces/ks/tables/carts", ""), 200, "")
	expect(t, "drop", e.call("DELETE", "/v1/keyspaces/ks/tables/carts", ""), 204, "")
	expect(t, "get dropped", e.call("GET", "/v1/keyspaces/ks/tables/carts", ""), 404, codeNotFound)
	expect(t, "drop dropped", e.call("DELETE", "/v1/keyspaces/ks/tables/carts", ""), 404, codeNotFound)

	for _, tc := range []struct{ body, want string }{
		{`{"keyspace":"other","name":"t","columns":[{"name":"a","type":"int"},{"name":"b","type":"int"}],"partition_key":["a"]}`, "not the path"},
		{`{"name":"t","columns":[{"name":"a","type":"varchar"},{"name":"b","type":"int"}],"partition_key":["a"]}`, "unknown type"},
		{`{"name":"t","columns":[{"name":"a","type":"int"}],"partition_key":["a"]}`, "outside the primary key"},
		{`{"name":"t","columns":[{"name":"a","type":"int"},{"name":"b","type":"int"}],"partition_key":["c"]}`, "not a declared column"},
		{`{"name":"t","columns":{"a":"int"},"partition_key":["a"]}`, `field "columns": want an array`},
	} {
		r := e.call("POST", "/v1/keyspaces/ks/tables", tc.body)
		expect(t, "create "+tc.body, r, 400, codeInvalid)
		if !strings.Contains(r.msg(), tc.want) {
			t.Errorf("create %s: %s lacks %q", tc.body, r.body, tc.want)
		}
	}
}

// ---- rows ----

func TestV1RowLifecycle(t *testing.T) {
	e := newV1Env(t)
	path := "/v1/keyspaces/ks/tables/users/rows/alice"
	expect(t, "get missing", e.call("GET", path, ""), 404, codeNotFound)

	r := e.call("PUT", path, `{"values":{"age":30,"email":"a@example.com"}}`, "X-Request-Id", "req-1")
	expect(t, "put", r, 200, "")
	var wr writeResultJSON
	r.decode(t, &wr)
	if wr.Version == 0 || wr.Stream == "" || wr.Seq == 0 || r.hdr.Get("ETag") != etag(wr.Version) {
		t.Errorf("put: %+v ETag %q", wr, r.hdr.Get("ETag"))
	}
	e.st.mu.Lock()
	w := e.st.mu.lastWrite
	e.st.mu.Unlock()
	if w.Op != state.MutPut || w.Consistency != state.Eventual || w.RequestID != "req-1" || w.If != nil ||
		len(w.Key) != 1 || w.Key[0].Value.Str != "alice" || len(w.Values) != 2 || w.Values[0].Value.Int != 30 {
		t.Errorf("put request: %+v", w)
	}
	if r.hdr.Get("X-Request-Id") != "req-1" {
		t.Errorf("request id not echoed: %q", r.hdr.Get("X-Request-Id"))
	}

	r = e.call("GET", path, "")
	expect(t, "get", r, 200, "")
	var row rowJSON
	r.decode(t, &row)
	if row.Version != wr.Version || row.Values["name"] != "alice" || row.Values["age"] != float64(30) || r.hdr.Get("ETag") != etag(wr.Version) {
		t.Errorf("get: %+v ETag %q", row, r.hdr.Get("ETag"))
	}

	r = e.call("PATCH", path, `{"values":{"email":null}}`)
	expect(t, "patch", r, 200, "")
	if e.st.mu.lastWrite.Op != state.MutUpdate {
		t.Errorf("patch op %v", e.st.mu.lastWrite.Op)
	}
	r = e.call("GET", path, "")
	r.decode(t, &row)
	if row.Values["email"] != nil || row.Values["age"] != float64(30) {
		t.Errorf("after patch: %+v", row)
	}

	expect(t, "delete", e.call("DELETE", path, ""), 200, "")
	if e.st.mu.lastWrite.Op != state.MutDelete || e.st.mu.lastWrite.Values != nil {
		t.Errorf("delete request: %+v", e.st.mu.lastWrite)
	}
	expect(t, "get deleted", e.call("GET", path, ""), 404, codeNotFound)

	// POST: the key is in the values; 201 with the row's path.
	r = e.call("POST", "/v1/keyspaces/ks/tables/users/rows", `{"values":{"name":"bob/ob x","age":7}}`)
	expect(t, "insert", r, 201, "")
	if loc := r.hdr.Get("Location"); loc != "/v1/keyspaces/ks/tables/users/rows/bob%2Fob%20x" {
		t.Errorf("insert Location %q", loc)
	}
	if w := e.st.mu.lastWrite; w.Op != state.MutPut || len(w.Values) != 1 || w.Values[0].Name != "age" {
		t.Errorf("insert request: %+v", w)
	}
	r = e.call("GET", r.hdr.Get("Location"), "")
	expect(t, "get inserted by its Location", r, 200, "")

	for _, tc := range []struct {
		method, path, body, want string
	}{
		{"PUT", path, `{"values":{"name":"x"}}`, "primary key"},
		{"PUT", path, `{"values":{"nope":1}}`, `no column "nope"`},
		{"PUT", path, `{"values":{"age":"old"}}`, "want an integer"},
		{"PUT", path, `{"values":{"age":1e99}}`, "want an integer"},
		{"PUT", path, `{}`, `needs "values"`},
		{"PUT", path, ``, "needs a JSON body"},
		{"PATCH", path, `{"value":{}}`, `unknown field "value"`},
		{"DELETE", path, `{"values":{"age":1}}`, "takes no values"},
		{"POST", "/v1/keyspaces/ks/tables/users/rows", `{"values":{"age":1}}`, "lack primary key column name"},
		{"GET", "/v1/keyspaces/ks/tables/users/rows/a/b", "", "key needs 1 values"},
		{"GET", "/v1/keyspaces/ks/tables/users/rows/", "", "key needs 1 values"},
		{"GET", "/v1/keyspaces/ks/tables/events/rows/alice/soon", "", "want an integer"},
		{"GET", "/v1/keyspaces/ks/tables/events/rows/alice", "", "key needs 2 values"},
	} {
		r := e.call(tc.method, tc.path, tc.body)
		expect(t, tc.method+" "+tc.path+" "+tc.body, r, 400, codeInvalid)
		if !strings.Contains(r.msg(), tc.want) {
			t.Errorf("%s %s %s: %s lacks %q", tc.method, tc.path, tc.body, r.body, tc.want)
		}
	}
	expect(t, "missing table", e.call("GET", "/v1/keyspaces/ks/tables/nope/rows/a", ""), 404, codeNotFound)
}

// Key values travel one per path segment, percent-encoded: "/" and spaces inside a value stay
// inside it.
func TestV1KeyPathEscaping(t *testing.T) {
	e := newV1Env(t)
	for _, tc := range []struct {
		path  string
		owner string
		year  int64
	}{
		{"/v1/keyspaces/ks/tables/events/rows/a%2Fb/2026", "a/b", 2026},
		{"/v1/keyspaces/ks/tables/events/rows/with%20space/-1", "with space", -1},
		{"/v1/keyspaces/ks/tables/events/rows/%2F%2F%2E%2E%2F/0", "//../", 0},
		{"/v1/keyspaces/ks/tables/events/rows/caf%C3%A9%3F%23/7", "café?#", 7},
		{"/v1/keyspaces/ks/tables/events/rows/plus+sign/1", "plus+sign", 1},
	} {
		r := e.call("PUT", tc.path, `{"values":{"note":"n","data":"AAE="}}`)
		expect(t, "put "+tc.path, r, 200, "")
		k := e.st.mu.lastWrite.Key
		if len(k) != 2 || k[0].Name != "owner" || k[0].Value.Str != tc.owner || k[1].Name != "year" || k[1].Value.Int != tc.year {
			t.Errorf("%s: key %+v, want (%q, %d)", tc.path, k, tc.owner, tc.year)
		}
		r = e.call("GET", tc.path, "")
		expect(t, "get "+tc.path, r, 200, "")
		var row rowJSON
		r.decode(t, &row)
		if row.Values["owner"] != tc.owner || row.Values["data"] != "AAE=" {
			t.Errorf("get %s: %+v", tc.path, row.Values)
		}
	}
	// The Location of an insert is the same escaping.
	r := e.call("POST", "/v1/keyspaces/ks/tables/events/rows", `{"values":{"owner":"x/y z","year":3}}`)
	expect(t, "insert", r, 201, "")
	if loc := r.hdr.Get("Location"); loc != "/v1/keyspaces/ks/tables/events/rows/x%2Fy%20z/3" {
		t.Errorf("Location %q", loc)
	}
}

func TestV1CompareAndSet(t *testing.T) {
	e := newV1Env(t)
	path := "/v1/keyspaces/ks/tables/users/rows/carol"
	put := func(body string, headers ...string) resp { return e.call("PUT", path, body, headers...) }

	expect(t, "If-Match * on a missing row", put(`{"values":{"age":1}}`, "If-Match", "*"), 412, codeConditionFailed)
	if c := e.st.mu.lastWrite.If; c == nil || !c.Exists || c.Absent || c.Version != 0 {
		t.Errorf("If-Match *: condition %+v", c)
	}
	r := put(`{"values":{"age":1}}`, "If-None-Match", "*")
	expect(t, "If-None-Match * on a missing row", r, 200, "")
	if c := e.st.mu.lastWrite.If; c == nil || !c.Absent {
		t.Errorf("If-None-Match *: condition %+v", c)
	}
	v1 := r.hdr.Get("ETag")
	expect(t, "If-None-Match * on an existing row", put(`{"values":{"age":2}}`, "If-None-Match", "*"), 412, codeConditionFailed)

	r = put(`{"values":{"age":2}}`, "If-Match", v1)
	expect(t, "If-Match with the current ETag", r, 200, "")
	want, _ := strconv.ParseInt(strings.Trim(v1, `"`), 10, 64)
	if c := e.st.mu.lastWrite.If; c == nil || c.Version != want {
		t.Errorf("If-Match %s: condition %+v", v1, c)
	}
	v2 := r.hdr.Get("ETag")
	expect(t, "If-Match with a stale ETag", put(`{"values":{"age":3}}`, "If-Match", v1), 412, codeConditionFailed)
	expect(t, "If-Match * on an existing row", e.call("PATCH", path, `{"values":{"age":3}}`, "If-Match", "*"), 200, "")

	// Column conditions, parsed with the column types.
	r = e.call("PATCH", path, `{"values":{"email":"c@x"},"if":{"age":3,"email":null}}`)
	expect(t, "if age=3", r, 200, "")
	c := e.st.mu.lastWrite.If
	if c == nil || len(c.Columns) != 2 || c.Columns[0].Column != "age" || c.Columns[0].Value.Kind != journal.KindInt ||
		c.Columns[0].Value.Int != 3 || c.Columns[1].Column != "email" || c.Columns[1].Value.Kind != journal.KindNull {
		t.Errorf("column condition: %+v", c)
	}
	expect(t, "if age=4", e.call("PATCH", path, `{"values":{"age":5},"if":{"age":4}}`), 412, codeConditionFailed)
	expect(t, "delete if age=3 and stale ETag", e.call("DELETE", path, `{"if":{"age":3}}`, "If-Match", v2), 412, codeConditionFailed)
	expect(t, "delete if age=3", e.call("DELETE", path, `{"if":{"age":3}}`), 200, "")

	for _, tc := range []struct {
		headers []string
		body    string
		want    string
	}{
		{[]string{"If-Match", "abc"}, "", "If-Match abc"},
		{[]string{"If-Match", `"abc"`}, "", "If-Match"},
		{[]string{"If-Match", `"0"`}, "", "If-Match"},
		{[]string{"If-Match", `"-5"`}, "", "If-Match"},
		{[]string{"If-Match", `12`}, "", "If-Match"},
		{[]string{"If-Match", `"12`}, "", "If-Match"},
		{[]string{"If-Match", `W/"12"`}, "", "weak"},
		{[]string{"If-Match", `"1", "2"`}, "", "If-Match"},
		{[]string{"If-None-Match", `"12"`}, "", "only *"},
		{[]string{"If-Match", "*", "If-None-Match", "*"}, "", "together"},
		{nil, `"if":{"nope":1}`, `no column "nope"`},
		{nil, `"if":{"name":"carol"}`, "primary key"},
		{nil, `"if":{"age":"x"}`, "want an integer"},
		{[]string{"If-None-Match", "*"}, `"if":{"age":1}`, "cannot go with"},
	} {
		body := `{"values":{"age":9}`
		if tc.body != "" {
			body += "," + tc.body
		}
		r := put(body+"}", tc.headers...)
		expect(t, fmt.Sprintf("%v %s", tc.headers, tc.body), r, 400, codeInvalid)
		if !strings.Contains(r.msg(), tc.want) {
			t.Errorf("%v %s: %s lacks %q", tc.headers, tc.body, r.body, tc.want)
		}
	}
}

func TestV1Consistency(t *testing.T) {
	e := newV1Env(t, func(c *Config) { c.MaxWait = 10 * time.Second })
	path := "/v1/keyspaces/ks/tables/users/rows/dave"
	body := `{"values":{"age":1}}`

	expect(t, "atomic with wait", e.call("PUT", path+"?consistency=atomic&wait=2s", body), 200, "")
	if w := e.st.mu.lastWrite; w.Consistency != state.Atomic || w.Wait != 2*time.Second || w.Lock != "" {
		t.Errorf("atomic: %+v", w)
	}
	expect(t, "atomic by headers", e.call("PUT", path, body, "Music-Consistency", "ATOMIC", "Music-Wait", "1500ms"), 200, "")
	if w := e.st.mu.lastWrite; w.Consistency != state.Atomic || w.Wait != 1500*time.Millisecond {
		t.Errorf("atomic by headers: %+v", w)
	}
	expect(t, "eventual read", e.call("GET", path, ""), 200, "")
	if rd := e.st.mu.lastRead; rd.Consistency != state.Eventual || rd.Lock != "" || rd.Wait != 0 {
		t.Errorf("eventual read: %+v", rd)
	}

	// Critical: the lock reference comes from the header or the parameter, and the state checks it.
	r := e.call("POST", "/v1/keyspaces/ks/tables/users/locks/dave", "")
	expect(t, "create lock", r, 201, "")
	var ref lockRefJSON
	r.decode(t, &ref)
	expect(t, "critical put before acquiring", e.call("PUT", path+"?consistency=critical", body, "Music-Lock", string(ref.Ref)), 409, codeNotHolder)
	expect(t, "acquire", e.call("POST", "/v1/locks/"+string(ref.Ref)+"/acquire", ""), 200, "")
	expect(t, "critical put", e.call("PUT", path+"?consistency=critical&lock="+string(ref.Ref), body), 200, "")
	if w := e.st.mu.lastWrite; w.Consistency != state.Critical || w.Lock != ref.Ref {
		t.Errorf("critical: %+v", w)
	}
	expect(t, "critical get", e.call("GET", path, "", "Music-Consistency", "critical", "Music-Lock", string(ref.Ref)), 200, "")
	if rd := e.st.mu.lastRead; rd.Consistency != state.Critical || rd.Lock != ref.Ref {
		t.Errorf("critical read: %+v", rd)
	}

	for _, tc := range []struct {
		query   string
		headers []string
		want    string
	}{
		{"?consistency=strong", nil, "want eventual, critical or atomic"},
		{"?consistency=critical", nil, "needs the lock reference"},
		{"?lock=" + string(ref.Ref), nil, "only used by consistency critical"},
		{"?consistency=critical&lock=nonsense", nil, "not one musicd issued"},
		{"?consistency=atomic", []string{"Music-Consistency", "eventual"}, "disagree"},
		{"?consistency=atomic&wait=soon", nil, "want a duration"},
		{"?consistency=atomic&wait=-1s", nil, "want a duration"},
		{"?consistency=atomic&wait=11s", nil, "longer than the 10s allowed"},
		{"", []string{"Music-Wait", "1h"}, "longer than"},
		{"?consistancy=critical", nil, `unknown query parameter "consistancy"`},
		{"?consistency=atomic&consistency=eventual", nil, "given 2 times"},
		{"?a=%zz", nil, "query string"},
	} {
		for _, method := range []string{"GET", "PUT"} {
			b := ""
			if method == "PUT" {
				b = body
			}
			r := e.call(method, path+tc.query, b, tc.headers...)
			expect(t, method+" "+tc.query, r, 400, codeInvalid)
			if !strings.Contains(r.msg(), tc.want) {
				t.Errorf("%s %s %v: %s lacks %q", method, tc.query, tc.headers, r.body, tc.want)
			}
		}
	}
}

func TestV1Select(t *testing.T) {
	e := newV1Env(t)
	for i, owner := range []string{"ann", "ann", "ann", "ben"} {
		expect(t, "put", e.call("PUT", fmt.Sprintf("/v1/keyspaces/ks/tables/events/rows/%s/%d", owner, 2020+i), `{"values":{"note":"n"}}`), 200, "")
	}
	base := "/v1/keyspaces/ks/tables/events/rows"
	r := e.call("GET", base+"?owner=ann&limit=2", "")
	expect(t, "page 1", r, 200, "")
	var p pageJSON
	r.decode(t, &p)
	if len(p.Rows) != 2 || p.Next == "" || p.Rows[0].Values["owner"] != "ann" || p.Rows[0].Version == 0 {
		t.Fatalf("page 1: %+v", p)
	}
	q := e.st.mu.lastQuery
	if q.Limit != 2 || len(q.Filters) != 1 || q.Filters[0].Column != "owner" || q.Filters[0].Value.Str != "ann" || e.st.mu.lastCons != state.Eventual {
		t.Errorf("query: %+v %v", q, e.st.mu.lastCons)
	}
	r = e.call("GET", base+"?owner=ann&limit=2&page="+p.Next, "")
	expect(t, "page 2", r, 200, "")
	var p2 pageJSON
	r.decode(t, &p2)
	if len(p2.Rows) != 1 || p2.Next != "" || strings.Contains(r.body, `"next"`) {
		t.Errorf("page 2: %+v %s", p2, r.body)
	}
	r = e.call("GET", base+"?year=2023&consistency=critical", "")
	expect(t, "typed filter", r, 200, "")
	if q := e.st.mu.lastQuery; q.Limit != state.DefaultPageRows || q.Filters[0].Value.Int != 2023 || e.st.mu.lastCons != state.Critical {
		t.Errorf("typed filter: %+v", q)
	}
	r = e.call("GET", base+"?owner=nobody", "")
	expect(t, "nothing", r, 200, "")
	if !strings.Contains(r.body, `"rows": []`) {
		t.Errorf("empty select renders rows as %s", r.body)
	}
	for _, tc := range []struct{ query, want string }{
		{"?limit=0", "limit"},
		{"?limit=1001", "limit"},
		{"?limit=", "limit"},
		{"?limit=ten", "limit"},
		{"?nope=1", `no column "nope"`},
		{"?year=soon", "want an integer"},
		{"?lock=x", "no lock"},
		{"?wait=1s", "no wait"},
		{"?owner=a&owner=b", "given 2 times"},
		{"?page=zzz", "page token"},
		{"?consistency=never", "consistency"},
	} {
		r := e.call("GET", base+tc.query, "")
		expect(t, "select "+tc.query, r, 400, codeInvalid)
		if !strings.Contains(r.msg(), tc.want) {
			t.Errorf("select %s: %s lacks %q", tc.query, r.body, tc.want)
		}
	}
}

// ---- locks ----

func TestV1Locks(t *testing.T) {
	e := newV1Env(t)
	lockPath := "/v1/keyspaces/ks/tables/events/locks/a%2Fb/2026"
	r := e.call("POST", lockPath, `{"lease":"30s","owner":"worker-1","type":"write"}`)
	expect(t, "create", r, 201, "")
	var first lockRefJSON
	r.decode(t, &first)
	if first.Ref == "" || r.hdr.Get("Location") != "/v1/locks/"+string(first.Ref) {
		t.Errorf("create: %+v Location %q", first, r.hdr.Get("Location"))
	}
	if o := e.st.mu.lastLockOpt; o.Type != locks.Write || o.Lease != 30*time.Second || o.Owner != "worker-1" {
		t.Errorf("options: %+v", o)
	}
	r = e.call("POST", lockPath, "")
	expect(t, "create with defaults", r, 201, "")
	var second lockRefJSON
	r.decode(t, &second)
	if o := e.st.mu.lastLockOpt; o.Type != locks.Write || o.Lease != defaultLockLease {
		t.Errorf("default options: %+v", o)
	}

	r = e.call("GET", lockPath, "")
	expect(t, "holders of a free lock", r, 200, "")
	if !strings.Contains(r.body, `"holders": []`) {
		t.Errorf("free lock: %s", r.body)
	}

	r = e.call("POST", "/v1/locks/"+string(first.Ref)+"/acquire?wait=5s", "")
	expect(t, "acquire", r, 200, "")
	var g grantJSON
	r.decode(t, &g)
	if g.Ref != first.Ref || g.Token == 0 || !g.PreviousUnclean || g.CaughtUp != 2 || e.st.mu.lastWait != 5*time.Second {
		t.Errorf("grant: %+v wait %s", g, e.st.mu.lastWait)
	}
	r = e.call("GET", lockPath, "")
	var hs struct{ Holders []holderJSON }
	r.decode(t, &hs)
	if len(hs.Holders) != 1 || hs.Holders[0].Ref != first.Ref || hs.Holders[0].Type != "write" || hs.Holders[0].Owner != "worker-1" ||
		hs.Holders[0].Lease != "30s" || hs.Holders[0].Token != g.Token {
		t.Errorf("holders: %+v", hs)
	}

	// The second reference waits behind the first: 423 with the holder.
	r = e.call("POST", "/v1/locks/"+string(second.Ref)+"/acquire", "", "Music-Wait", "1s")
	expect(t, "acquire held", r, 423, codeLocked)
	var eb errorBody
	r.decode(t, &eb)
	if len(eb.Holders) != 1 || eb.Holders[0].Ref != first.Ref || eb.Holders[0].Token != g.Token || !strings.Contains(eb.Message, string(first.Ref)) {
		t.Errorf("locked body: %+v", eb)
	}
	if e.st.mu.lastWait != time.Second {
		t.Errorf("wait from header: %s", e.st.mu.lastWait)
	}

	expect(t, "renew", e.call("POST", "/v1/locks/"+string(first.Ref)+"/renew", ""), 204, "")
	expect(t, "release", e.call("DELETE", "/v1/locks/"+string(first.Ref), ""), 204, "")
	// A reference that left its queue is not found (the state service's contract).
	expect(t, "release again", e.call("DELETE", "/v1/locks/"+string(first.Ref), ""), 404, codeNotFound)
	expect(t, "renew released", e.call("POST", "/v1/locks/"+string(first.Ref)+"/renew", ""), 404, codeNotFound)
	expect(t, "acquire released", e.call("POST", "/v1/locks/"+string(first.Ref)+"/acquire", ""), 404, codeNotFound)
	expect(t, "force released", e.call("DELETE", "/v1/locks/"+string(first.Ref)+"?force=true", ""), 404, codeNotFound)
	expect(t, "force", e.call("DELETE", "/v1/locks/"+string(second.Ref)+"?force=true", ""), 204, "")
	if !e.st.called("ForceRelease") {
		t.Error("force=true did not force")
	}

	r = e.call("POST", lockPath, `{"type":"read"}`)
	expect(t, "read lock", r, 201, "")
	if e.st.mu.lastLockOpt.Type != locks.Read {
		t.Errorf("read lock options %+v", e.st.mu.lastLockOpt)
	}

	for _, tc := range []struct{ method, path, body, want string }{
		{"POST", lockPath, `{"type":"exclusive"}`, "want write or read"},
		{"POST", lockPath, `{"lease":"forever"}`, "lease"},
		{"POST", lockPath, `{"lease":"0s"}`, "lease"},
		{"POST", lockPath, `{"lease":"25h"}`, "lease"},
		{"POST", lockPath, `{"lease":30}`, `field "lease": want a string`},
		{"POST", lockPath, `{"owner":"` + strings.Repeat("o", 257) + `"}`, "owner"},
		{"POST", "/v1/keyspaces/ks/tables/events/locks/a", "", "key needs 2 values"},
		{"POST", "/v1/locks/nonsense/acquire", "", "not one musicd issued"},
		{"POST", "/v1/locks/" + string(second.Ref) + "/acquire?wait=1y", "", "wait"},
		{"POST", "/v1/locks/" + string(second.Ref) + "/acquire?consistency=critical", "", "unknown query parameter"},
		{"DELETE", "/v1/locks/" + string(second.Ref) + "?force=maybe", "", "force"},
		{"POST", "/v1/locks/" + string(second.Ref) + "/renew?force=true", "", "unknown query parameter"},
	} {
		r := e.call(tc.method, tc.path, tc.body)
		expect(t, tc.method+" "+tc.path+" "+tc.body, r, 400, codeInvalid)
		if !strings.Contains(r.msg(), tc.want) {
			t.Errorf("%s %s %s: %s lacks %q", tc.method, tc.path, tc.body, r.body, tc.want)
		}
	}
	expect(t, "lock on a missing table", e.call("POST", "/v1/keyspaces/ks/tables/nope/locks/a", ""), 404, codeNotFound)
}

// ---- errors ----

// Every error of the state maps to its code through the one table; anything else is a logged
// 500 internal.
func TestV1ErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("%w: column x", state.ErrInvalid), 400, codeInvalid},
		{fmt.Errorf("keyspace ks: %w", state.ErrNotFound), 404, codeNotFound},
		{state.ErrExists, 409, codeExists},
		{fmt.Errorf("key k: %w", state.ErrNotHolder), 409, codeNotHolder},
		{fmt.Errorf("cas: %w", state.ErrConditionFailed), 412, codeConditionFailed},
		{fmt.Errorf("wrapped: %w", &state.LockedError{Holders: []state.LockHolder{{Ref: "kv.ks.t.x~1", Type: "write", Token: 9}}}), 423, codeLocked},
		{state.ErrLocked, 423, codeLocked},
		{fmt.Errorf("cassandra: %w", state.ErrUnavailable), 503, codeUnavailable},
		{fmt.Errorf("query: %w", context.DeadlineExceeded), 503, codeUnavailable},
		{fmt.Errorf("lock: %w", locks.ErrNotHeld), 409, codeNotHolder},
		{fmt.Errorf("lock: %w", locks.ErrInvalidOptions), 400, codeInvalid},
		{errors.New("nil pointer somewhere"), 500, codeInternal},
	} {
		e := newV1Env(t)
		e.st.fail["Read"] = tc.err
		r := e.call("GET", "/v1/keyspaces/ks/tables/users/rows/x", "", "X-Request-Id", "rid-7")
		expect(t, tc.err.Error(), r, tc.status, tc.code)
		if tc.code == codeLocked && strings.Contains(tc.err.Error(), "held by") {
			var eb errorBody
			r.decode(t, &eb)
			if len(eb.Holders) != 1 || eb.Holders[0].Token != 9 {
				t.Errorf("locked holders: %+v", eb)
			}
		}
		logged := e.logs.String()
		if tc.code == codeInternal {
			if strings.Contains(r.body, "nil pointer") {
				t.Errorf("internal error shown to the client: %s", r.body)
			}
			if !strings.Contains(logged, "level=ERROR") || !strings.Contains(logged, "nil pointer") || !strings.Contains(logged, "rid-7") {
				t.Errorf("internal error not logged with its request id: %q", logged)
			}
		} else if strings.Contains(logged, "level=ERROR") {
			t.Errorf("%v logged as an error: %s", tc.err, logged)
		}
	}
	// Every code of the table is one the tests produce somewhere (keeps the table honest).
	seen := map[string]bool{}
	for _, ec := range errorTable() {
		if seen[ec.code] || http.StatusText(ec.status) == "" || ec.doc == "" {
			t.Errorf("error table row %+v", ec)
		}
		seen[ec.code] = true
	}
}

// A dependency that does not answer makes the request fail with 503 after request_timeout,
// rather than hold the connection.
func TestV1DeadlineIsUnavailable(t *testing.T) {
	e := newV1Env(t, func(c *Config) { c.RequestTimeout = 20 * time.Millisecond; c.MaxWait = 20 * time.Millisecond })
	e.st.block = "Keyspace"
	r := e.call("GET", "/v1/keyspaces/ks", "")
	expect(t, "blocked dependency", r, 503, codeUnavailable)
	if !strings.Contains(r.body, "did not finish in time") {
		t.Errorf("message: %s", r.body)
	}
}

func TestV1BodyLimit(t *testing.T) {
	e := newV1Env(t, func(c *Config) { c.MaxBodyBytes = 1024 })
	big := `{"values":{"email":"` + strings.Repeat("x", 2000) + `"}}`
	for _, tc := range []struct{ method, path string }{
		{"PUT", "/v1/keyspaces/ks/tables/users/rows/a"},
		{"POST", "/v1/keyspaces/ks/tables/users/rows"},
		{"POST", "/v1/keyspaces"},
		{"POST", "/v1/keyspaces/ks/tables"},
		{"POST", "/v1/keyspaces/ks/tables/users/locks/a"},
		{"DELETE", "/v1/keyspaces/ks/tables/users/rows/a"},
	} {
		expect(t, tc.method+" "+tc.path, e.call(tc.method, tc.path, big), 413, codeBodyTooLarge)
	}
	if e.st.called("Write") || e.st.called("CreateKeyspace") {
		t.Error("an oversized body reached the state")
	}
	expect(t, "under the limit", e.call("PUT", "/v1/keyspaces/ks/tables/users/rows/a", `{"values":{"email":"x"}}`), 200, "")
}

// Without a State (the daemon did not start one) /v1 answers 503, and the rest of the server
// works as before.
func TestV1WithoutState(t *testing.T) {
	h := newTestServer(t).Handler()
	for _, p := range []string{"/v1/keyspaces", "/v1/keyspaces/ks/tables/t/rows/k", "/v1/keyspaces/ks/tables/t/rows"} {
		code, body := do(t, h, "GET", p)
		if code != 503 || !strings.Contains(body, `"code": "unavailable"`) {
			t.Errorf("%s: %d %s", p, code, body)
		}
	}
	code, body := do(t, h, "GET", "/v1/openapi.json")
	if code != 200 || !strings.Contains(body, `"openapi": "3.0.3"`) {
		t.Errorf("openapi.json without state: %d", code)
	}
}

func TestV1MethodNotAllowedAndNotFound(t *testing.T) {
	e := newV1Env(t)
	r := e.call("PUT", "/v1/keyspaces/ks", "")
	expect(t, "PUT keyspace", r, 405, codeMethodNotAllowed)
	if r.hdr.Get("Allow") != "GET, DELETE" {
		t.Errorf("Allow %q", r.hdr.Get("Allow"))
	}
	r = e.call("PUT", "/v1/keyspaces/ks/tables/users", "")
	if r.code != 405 || r.hdr.Get("Allow") != "GET, DELETE" {
		t.Errorf("PUT table: %d Allow %q", r.code, r.hdr.Get("Allow"))
	}
	r = e.call("DELETE", "/v1/keyspaces", "")
	if r.code != 405 || r.hdr.Get("Allow") != "GET, POST" {
		t.Errorf("DELETE keyspaces: %d Allow %q", r.code, r.hdr.Get("Allow"))
	}
	// The mux redirects a method that only the row routes take to the path with a slash, where
	// the empty key is refused.
	r = e.call("PUT", "/v1/keyspaces/ks/tables/users/rows", "")
	if r.code != http.StatusTemporaryRedirect || r.hdr.Get("Location") != "/v1/keyspaces/ks/tables/users/rows/" {
		t.Errorf("PUT rows: %d Location %q", r.code, r.hdr.Get("Location"))
	}
	expect(t, "PUT rows/", e.call("PUT", "/v1/keyspaces/ks/tables/users/rows/", `{"values":{}}`), 400, codeInvalid)
	r = e.call("GET", "/v1/locks/x/acquire", "")
	if r.code != 405 || r.hdr.Get("Allow") != "POST" {
		t.Errorf("GET acquire: %d Allow %q", r.code, r.hdr.Get("Allow"))
	}
	expect(t, "unknown path", e.call("GET", "/v1/nothing", ""), 404, codeNotFound)
	expect(t, "bad request id", e.call("GET", "/v1/keyspaces", "", "X-Request-Id", "has space"), 400, codeInvalid)
	r = e.call("GET", "/v1/keyspaces", "")
	if len(r.hdr.Get("X-Request-Id")) != 24 {
		t.Errorf("generated request id %q", r.hdr.Get("X-Request-Id"))
	}
}

func TestV1Metrics(t *testing.T) {
	e := newV1Env(t)
	e.call("GET", "/v1/keyspaces/ks/tables/users/rows/some%2Fkey", "")
	e.call("PUT", "/v1/keyspaces/ks/tables/users/rows/k", `{"values":{}}`)
	_, metrics := do(t, e.h, "GET", "/metrics")
	for _, want := range []string{
		`music_api_request_duration_seconds_count{code="404",method="get",route="/v1/keyspaces/{ks}/tables/{table}/rows/{key...}"} 1`,
		`music_api_request_duration_seconds_count{code="200",method="put",route="/v1/keyspaces/{ks}/tables/{table}/rows/{key...}"} 1`,
		`music_http_requests_total{code="200",method="put",route="/v1/keyspaces/{ks}/tables/{table}/rows/{key...}"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(metrics, "some") {
		t.Error("a raw path reached a metric label")
	}
}

// ---- the OpenAPI document and docs/api.md ----

// The subset of OpenAPI 3.0 the document uses. Decoding with KnownFields catches misspelt keys.
type oaDoc struct {
	OpenAPI  string                `yaml:"openapi"`
	Info     oaInfo                `yaml:"info"`
	Servers  []map[string]string   `yaml:"servers"`
	Security []map[string][]string `yaml:"security"`
	Tags     []oaTag               `yaml:"tags"`
	Paths    map[string]oaPathItem `yaml:"paths"`
	Comps    oaComponents          `yaml:"components"`
}

type oaInfo struct {
	Title       string `yaml:"title"`
	Version     string `yaml:"version"`
	Description string `yaml:"description"`
}

type oaTag struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
}

type oaComponents struct {
	SecuritySchemes map[string]map[string]string `yaml:"securitySchemes"`
	Parameters      map[string]oaParam           `yaml:"parameters"`
	Headers         map[string]oaHeader          `yaml:"headers"`
	Responses       map[string]oaResponse        `yaml:"responses"`
	Schemas         map[string]*oaSchema         `yaml:"schemas"`
}

type oaPathItem struct {
	Parameters []oaParam `yaml:"parameters"`
	Get        *oaOp     `yaml:"get"`
	Post       *oaOp     `yaml:"post"`
	Put        *oaOp     `yaml:"put"`
	Patch      *oaOp     `yaml:"patch"`
	Delete     *oaOp     `yaml:"delete"`
}

func (p oaPathItem) ops() []struct {
	method string
	op     *oaOp
} {
	var out []struct {
		method string
		op     *oaOp
	}
	for _, m := range []struct {
		method string
		op     *oaOp
	}{{"GET", p.Get}, {"POST", p.Post}, {"PUT", p.Put}, {"PATCH", p.Patch}, {"DELETE", p.Delete}} {
		if m.op != nil {
			out = append(out, m)
		}
	}
	return out
}

type oaOp struct {
	OperationID string                `yaml:"operationId"`
	Tags        []string              `yaml:"tags"`
	Summary     string                `yaml:"summary"`
	Description string                `yaml:"description"`
	Security    []map[string][]string `yaml:"security"`
	Parameters  []oaParam             `yaml:"parameters"`
	RequestBody *oaBody               `yaml:"requestBody"`
	Responses   map[string]oaResponse `yaml:"responses"`
}

type oaParam struct {
	Ref         string    `yaml:"$ref"`
	Name        string    `yaml:"name"`
	In          string    `yaml:"in"`
	Required    bool      `yaml:"required"`
	Description string    `yaml:"description"`
	Style       string    `yaml:"style"`
	Explode     bool      `yaml:"explode"`
	Schema      *oaSchema `yaml:"schema"`
}

type oaBody struct {
	Required bool               `yaml:"required"`
	Content  map[string]oaMedia `yaml:"content"`
}

type oaMedia struct {
	Schema *oaSchema `yaml:"schema"`
}

type oaResponse struct {
	Ref         string              `yaml:"$ref"`
	Description string              `yaml:"description"`
	Headers     map[string]oaHeader `yaml:"headers"`
	Content     map[string]oaMedia  `yaml:"content"`
}

type oaHeader struct {
	Ref         string    `yaml:"$ref"`
	Description string    `yaml:"description"`
	Schema      *oaSchema `yaml:"schema"`
}

type oaSchema struct {
	Ref                  string               `yaml:"$ref"`
	Type                 string               `yaml:"type"`
	Format               string               `yaml:"format"`
	Description          string               `yaml:"description"`
	Pattern              string               `yaml:"pattern"`
	Enum                 []any                `yaml:"enum"`
	Default              any                  `yaml:"default"`
	Example              any                  `yaml:"example"`
	Minimum              *float64             `yaml:"minimum"`
	Maximum              *float64             `yaml:"maximum"`
	MaxLength            *int                 `yaml:"maxLength"`
	Items                *oaSchema            `yaml:"items"`
	Required             []string             `yaml:"required"`
	Properties           map[string]*oaSchema `yaml:"properties"`
	AdditionalProperties *oaSchema            `yaml:"additionalProperties"`
}

func loadOpenAPI(t testing.TB) oaDoc {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(openAPIYAML))
	dec.KnownFields(true)
	var doc oaDoc
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	return doc
}

func refName(ref string) string { return ref[strings.LastIndex(ref, "/")+1:] }

func (d oaDoc) param(p oaParam) oaParam {
	if p.Ref != "" {
		return d.Comps.Parameters[refName(p.Ref)]
	}
	return p
}

func (d oaDoc) response(r oaResponse) oaResponse {
	if r.Ref != "" {
		return d.Comps.Responses[refName(r.Ref)]
	}
	return r
}

// muxPattern is the ServeMux pattern of a documented path: {key} stands for {key...}.
func muxPattern(method, path string) string {
	return method + " " + strings.NewReplacer("{key}", "{key...}", "{partition}", "{partition...}").Replace(path)
}

// Every route the server registers for the native API and the operational endpoints
// (Server.patterns) is in the document and every documented operation is a route, with the
// path parameters it declares; the mux sends a concrete request of each documented operation to
// that operation's route. The MUSIC v2 layer's routes (Server.musicPatterns) are out of this
// document's scope by choice: docs/music-v2.md lists them (TestMusicV2DocListsRoutes).
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	s := newV1Env(t).s
	registered := map[string]bool{}
	for _, p := range s.patterns {
		if p != "/" {
			registered[p] = true
		}
	}
	documented := map[string]bool{}
	ids := map[string]bool{}
	mux := s.http.Handler.(*http.ServeMux)
	for path, item := range doc.Paths {
		for _, m := range item.ops() {
			pat := muxPattern(m.method, path)
			documented[pat] = true
			if !registered[pat] {
				t.Errorf("documented but not served: %s", pat)
			}
			if m.op.OperationID == "" || ids[m.op.OperationID] {
				t.Errorf("%s: operationId %q missing or used twice", pat, m.op.OperationID)
			}
			ids[m.op.OperationID] = true
			if m.op.Summary == "" || len(m.op.Tags) != 1 || len(m.op.Responses) == 0 {
				t.Errorf("%s: needs a summary, one tag and responses", pat)
			}
			// Path parameters: declared exactly for the path's wildcards.
			declared := map[string]bool{}
			for _, p := range append(slices.Clone(item.Parameters), m.op.Parameters...) {
				p = doc.param(p)
				if p.Name == "" || p.In == "" || p.Description == "" || p.Schema == nil {
					t.Errorf("%s: incomplete parameter %+v", pat, p)
				}
				if p.In == "path" {
					if !p.Required {
						t.Errorf("%s: path parameter %s not required", pat, p.Name)
					}
					declared[p.Name] = true
				}
			}
			concrete := path
			for _, seg := range strings.Split(path, "/") {
				if strings.HasPrefix(seg, "{") {
					name := strings.Trim(seg, "{}")
					if !declared[name] {
						t.Errorf("%s: path parameter %s not declared", pat, name)
					}
					delete(declared, name)
					val := map[string]string{"ks": "ks", "table": "users", "key": "a%2Fb/c%20d", "ref": "kv.ks.users.x~1", "ns": "ks", "queue": "jobs", "id": "job-1",
						"partition": "users/3", "site": "b"}[name]
					concrete = strings.Replace(concrete, seg, val, 1)
				}
			}
			if len(declared) > 0 {
				t.Errorf("%s: declares path parameters %v that the path lacks", pat, declared)
			}
			req := httptest.NewRequest(m.method, concrete, nil)
			if _, got := mux.Handler(req); got != pat {
				t.Errorf("%s %s reaches %q, want %q", m.method, concrete, got, pat)
			}
		}
	}
	for p := range registered {
		if !documented[p] {
			t.Errorf("served but not documented: %s", p)
		}
	}
}

// The document is consistent: references resolve, error responses carry codes of the error
// table with their statuses, and the Error schema lists exactly the table's codes.
func TestOpenAPIConsistent(t *testing.T) {
	doc := loadOpenAPI(t)
	if doc.OpenAPI != "3.0.3" || doc.Info.Version == "" {
		t.Errorf("openapi %q version %q", doc.OpenAPI, doc.Info.Version)
	}
	// Every $ref resolves.
	var refs []string
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		for i, c := range n.Content {
			if n.Kind == yaml.MappingNode && i%2 == 0 && c.Value == "$ref" {
				refs = append(refs, n.Content[i+1].Value)
			}
			walk(c)
		}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(openAPIYAML, &root); err != nil {
		t.Fatal(err)
	}
	walk(&root)
	if len(refs) < 50 {
		t.Errorf("only %d $refs found", len(refs))
	}
	for _, ref := range refs {
		parts := strings.Split(strings.TrimPrefix(ref, "#/components/"), "/")
		ok := len(parts) == 2
		if ok {
			switch parts[0] {
			case "parameters":
				_, ok = doc.Comps.Parameters[parts[1]]
			case "headers":
				_, ok = doc.Comps.Headers[parts[1]]
			case "responses":
				_, ok = doc.Comps.Responses[parts[1]]
			case "schemas":
				_, ok = doc.Comps.Schemas[parts[1]]
			default:
				ok = false
			}
		}
		if !ok {
			t.Errorf("unresolved $ref %s", ref)
		}
	}
	// Error codes.
	table := map[string]int{}
	var codes []string
	for _, ec := range errorTable() {
		table[ec.code] = ec.status
		codes = append(codes, ec.code)
	}
	var enum []string
	for _, v := range doc.Comps.Schemas["Error"].Properties["code"].Enum {
		enum = append(enum, v.(string))
	}
	if !slices.Equal(enum, codes) {
		t.Errorf("Error.code enum %v, want the table's %v", enum, codes)
	}
	for path, item := range doc.Paths {
		for _, m := range item.ops() {
			for status, r := range m.op.Responses {
				n, err := strconv.Atoi(status)
				if err != nil {
					t.Errorf("%s %s: response %q", m.method, path, status)
					continue
				}
				r = doc.response(r)
				if n < 400 || strings.HasPrefix(path, "/readyz") {
					continue
				}
				// One code, or several with the same status ("not_holder or not_owner").
				for _, code := range strings.Split(r.Description, " or ") {
					if table[code] != n {
						t.Errorf("%s %s: response %d is %q, not an error code with that status", m.method, path, n, r.Description)
					}
				}
			}
			if strings.HasPrefix(path, "/v1/") {
				for _, status := range []string{"400", "401", "500"} {
					if _, ok := m.op.Responses[status]; !ok {
						t.Errorf("%s %s: does not document %s", m.method, path, status)
					}
				}
			}
		}
	}
	// The served JSON is the document.
	e := newV1Env(t)
	r := e.call("GET", "/v1/openapi.json", "")
	var served, fromYAML any
	r.decode(t, &served)
	if err := yaml.Unmarshal(openAPIYAML, &fromYAML); err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(fromYAML)
	_ = json.Unmarshal(j, &fromYAML)
	if r.code != 200 || !jsonEqual(served, fromYAML) {
		t.Errorf("GET /v1/openapi.json is not the embedded document (%d)", r.code)
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

const apiDocPath = "../docs/api.md"

// docs/api.md is rendered from the OpenAPI document and the error table; rewrite it with
// go test ./api -run TestAPIDocs -update.
func TestAPIDocs(t *testing.T) {
	want := renderAPIDoc(loadOpenAPI(t))
	if *update {
		if err := os.WriteFile(apiDocPath, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(apiDocPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s is out of date: run go test ./api -run TestAPIDocs -update", apiDocPath)
	}
}

func renderAPIDoc(d oaDoc) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# REST API reference\n\n<!-- Generated from api/openapi.yaml by \"go test ./api -run TestAPIDocs -update\"; do not edit. -->\n\n")
	fmt.Fprintf(&b, "%s, version %s. The daemon serves the OpenAPI 3.0 document itself at `GET /v1/openapi.json`.\n\n", d.Info.Title, d.Info.Version)
	b.WriteString(strings.TrimSpace(d.Info.Description) + "\n\n")
	b.WriteString("Contents: [errors](#errors)")
	for _, tag := range d.Tags {
		fmt.Fprintf(&b, ", [%s](#%s)", tag.Name, tag.Name)
	}
	b.WriteString(", [schemas](#schemas).\n\n")

	b.WriteString("## Errors\n\nEvery error is a JSON object `{\"code\", \"message\"}` (and `holders` with `locked`). Clients switch on `code`; the message is for people.\n\n")
	b.WriteString("| code | status | meaning |\n|---|---|---|\n")
	for _, ec := range errorTable() {
		fmt.Fprintf(&b, "| `%s` | %d %s | %s |\n", ec.code, ec.status, http.StatusText(ec.status), ec.doc)
	}
	b.WriteString("\n")

	paths := make([]string, 0, len(d.Paths))
	for p := range d.Paths {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, tag := range d.Tags {
		fmt.Fprintf(&b, "## %s\n\n%s\n\n", tag.Name, tag.Description)
		for _, path := range paths {
			item := d.Paths[path]
			for _, m := range item.ops() {
				if m.op.Tags[0] != tag.Name {
					continue
				}
				renderOp(&b, d, m.method, path, item, m.op)
			}
		}
	}

	b.WriteString("## Schemas\n\n")
	names := make([]string, 0, len(d.Comps.Schemas))
	for n := range d.Comps.Schemas {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := d.Comps.Schemas[n]
		fmt.Fprintf(&b, "### %s\n\n", n)
		if s.Description != "" {
			b.WriteString(oneLineMD(s.Description) + "\n\n")
		}
		if len(s.Properties) == 0 {
			fmt.Fprintf(&b, "%s.\n\n", schemaType(s))
			continue
		}
		b.WriteString("| field | type | required | description |\n|---|---|---|---|\n")
		props := make([]string, 0, len(s.Properties))
		for p := range s.Properties {
			props = append(props, p)
		}
		sort.Strings(props)
		for _, p := range props {
			ps := s.Properties[p]
			req := ""
			if slices.Contains(s.Required, p) {
				req = "yes"
			}
			fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", p, schemaType(ps), req, oneLineMD(ps.Description))
		}
		b.WriteString("\n")
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

func renderOp(b *strings.Builder, d oaDoc, method, path string, item oaPathItem, op *oaOp) {
	fmt.Fprintf(b, "### `%s %s`\n\n%s", method, path, op.Summary)
	if op.Security != nil && len(op.Security) == 0 {
		b.WriteString(" No token needed.")
	}
	b.WriteString("\n\n")
	if op.Description != "" {
		b.WriteString(strings.TrimSpace(op.Description) + "\n\n")
	}
	// X-Request-Id, which every /v1 operation takes, is described once in the introduction.
	params := slices.DeleteFunc(append(slices.Clone(item.Parameters), op.Parameters...), func(p oaParam) bool {
		return d.param(p).Name == headerRequestID
	})
	if len(params) > 0 {
		b.WriteString("| parameter | in | type | description |\n|---|---|---|---|\n")
		for _, p := range params {
			p = d.param(p)
			name := "`" + p.Name + "`"
			if p.Required {
				name += " (required)"
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s |\n", name, p.In, schemaType(p.Schema), oneLineMD(p.Description))
		}
		b.WriteString("\n")
	}
	if rb := op.RequestBody; rb != nil {
		req := "optional"
		if rb.Required {
			req = "required"
		}
		fmt.Fprintf(b, "Request body (%s): %s.\n\n", req, schemaType(rb.Content["application/json"].Schema))
	}
	b.WriteString("| status | response |\n|---|---|\n")
	codes := make([]string, 0, len(op.Responses))
	for c := range op.Responses {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	for _, c := range codes {
		r := d.response(op.Responses[c])
		n, _ := strconv.Atoi(c)
		desc := oneLineMD(r.Description)
		if _, isErr := errorCodeStatus(r.Description); isErr {
			desc = "[`" + r.Description + "`](#errors)."
		} else {
			for _, media := range r.Content {
				desc += " " + schemaType(media.Schema) + "."
			}
		}
		var hdrs []string
		for h := range r.Headers {
			hdrs = append(hdrs, "`"+h+"`")
		}
		sort.Strings(hdrs)
		if len(hdrs) > 0 {
			desc += " Headers: " + strings.Join(hdrs, ", ") + "."
		}
		fmt.Fprintf(b, "| %d %s | %s |\n", n, http.StatusText(n), desc)
	}
	b.WriteString("\n")
}

func errorCodeStatus(code string) (int, bool) {
	for _, ec := range errorTable() {
		if ec.code == code {
			return ec.status, true
		}
	}
	return 0, false
}

// schemaType renders a schema's type for a table cell.
func schemaType(s *oaSchema) string {
	if s == nil {
		return ""
	}
	if s.Ref != "" {
		n := refName(s.Ref)
		return "[`" + n + "`](#" + strings.ToLower(n) + ")"
	}
	var t string
	switch s.Type {
	case "array":
		t = "array of " + schemaType(s.Items)
	case "object":
		t = "object"
		if s.AdditionalProperties != nil {
			if inner := schemaType(s.AdditionalProperties); inner != "" {
				t = "object of " + inner
			} else {
				t = "object of any JSON"
			}
		}
	default:
		t = s.Type
		if s.Format != "" {
			t += " (" + s.Format + ")"
		}
	}
	if len(s.Enum) > 0 {
		var vs []string
		for _, v := range s.Enum {
			vs = append(vs, fmt.Sprintf("`%v`", v))
		}
		t += ": " + strings.Join(vs, ", ")
	}
	if s.Default != nil {
		t += fmt.Sprintf(", default `%v`", s.Default)
	}
	return t
}

// oneLineMD makes a description fit a table cell.
func oneLineMD(s string) string {
	return strings.ReplaceAll(strings.Join(strings.Fields(s), " "), "|", `\|`)
}

// Whatever a client sends to a write or a select, the answer is never a 500 and every error is
// a JSON body with a code of the table.
func FuzzV1Requests(f *testing.F) {
	for _, seed := range []struct{ body, key, query, ifMatch string }{
		{`{"values":{"note":"n","data":"AAE="}}`, "a/b", "", ""},
		{`{"values":{"note":1}}`, "x", "consistency=atomic&wait=1s", `"17"`},
		{`{"values":{},"if":{"note":null}}`, "", "consistency=critical&lock=kv.ks.events.x~1", "*"},
		{`{"values":{"year":1}}`, "%", "limit=5&owner=x", `W/"1"`},
		{`[1,2]`, "..", "page=zz", `"-1"`},
		{`{"values":{"data":"!!"}}`, "é", "year=1e3", ""},
	} {
		f.Add(seed.body, seed.key, seed.query, seed.ifMatch)
	}
	e := newV1Env(f, func(c *Config) { c.MaxBodyBytes = 4096 })
	codes := map[string]bool{}
	for _, ec := range errorTable() {
		codes[ec.code] = true
	}
	f.Fuzz(func(t *testing.T, body, key, query, ifMatch string) {
		for _, method := range []string{"PUT", "PATCH", "DELETE", "GET", "POST"} {
			req := httptest.NewRequest(method, "/", strings.NewReader(body))
			req.URL.Path = "/v1/keyspaces/ks/tables/events/rows/" + key + "/1"
			if method == "POST" {
				req.URL.Path = "/v1/keyspaces/ks/tables/events/rows"
			}
			req.URL.RawQuery = query
			if ifMatch != "" {
				req.Header.Set("If-Match", ifMatch)
			}
			rec := httptest.NewRecorder()
			e.h.ServeHTTP(rec, req)
			r := resp{rec.Code, rec.Header(), rec.Body.String()}
			if r.code >= 500 && r.errCode() != codeUnavailable {
				t.Fatalf("%s %s?%s If-Match %q body %q: %d %s", method, req.URL.Path, query, ifMatch, body, r.code, r.body)
			}
			if r.code >= 400 && !codes[r.errCode()] {
				t.Fatalf("%s %s: %d without a coded JSON error: %s", method, req.URL.Path, r.code, r.body)
			}
		}
	})
}
