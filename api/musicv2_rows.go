package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/state"
)

// Rows of the MUSIC v2 layer: insert, update, delete, select and critical get, with
// consistencyInfo mapped onto the state service's consistencies, and the conditional
// (compare-and-set) endpoints.

// musicRowBody is the union of MUSIC's JsonInsert, JsonUpdate and JsonDelete (MUSIC ignores
// unknown fields, so does this layer).
type musicRowBody struct {
	Values          map[string]json.RawMessage `json:"values"`
	ConsistencyInfo map[string]string          `json:"consistencyInfo"`
	Conditions      map[string]json.RawMessage `json:"conditions"`
	Columns         []string                   `json:"columns"`
	TTL             json.RawMessage            `json:"ttl"`
	Timestamp       json.RawMessage            `json:"timestamp"`
}

// unsupported refuses what the state service cannot do: a TTL, a client-chosen write timestamp.
func (b musicRowBody) unsupported() error {
	for name, v := range map[string]json.RawMessage{"ttl": b.TTL, "timestamp": b.Timestamp} {
		if s := strings.TrimSpace(string(v)); s != "" && s != "null" && s != `""` {
			return invalid("%s is not supported: musicd rows do not expire and take the write's own timestamp", name)
		}
	}
	return nil
}

// musicParameterError is MUSIC's message for a row operation without a row identifier.
const musicParameterError = "Missing Row Identifier. Please provide the parameter of key=value for the row being selected."

// musicMaxRows bounds the rows of one select: MUSIC returns every match in one answer, musicd
// at most this many (more is a 400 that says how to narrow the select).
const (
	musicMaxRows  = state.MaxPageRows
	musicMaxPages = 100
)

// musicValue adapts a value as MUSIC takes it (MUSIC converts each value through its text: 50
// for a text column is "50", "1.5" for a double is 1.5, a number for a timestamp is epoch
// milliseconds) to the JSON form of the column's type. Anything else is left for ParseJSON to
// judge.
func musicValue(col state.Column, raw json.RawMessage) json.RawMessage {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return raw
	}
	quoted := s[0] == '"'
	var text string
	if quoted && json.Unmarshal(raw, &text) != nil {
		return raw
	}
	text = strings.TrimSpace(text)
	switch col.Type {
	case state.Text:
		if !quoted && s[0] != '{' && s[0] != '[' {
			b, _ := json.Marshal(s)
			return b
		}
	case state.Double, state.Float:
		if quoted {
			if f, err := strconv.ParseFloat(text, 64); err == nil && !strings.ContainsAny(text, "nNiI") {
				return json.RawMessage(strconv.FormatFloat(f, 'g', -1, 64))
			}
		}
	case state.Boolean:
		if quoted {
			switch strings.ToLower(text) {
			case "true", "false":
				return json.RawMessage(strings.ToLower(text))
			}
		}
	case state.Timestamp:
		if !quoted {
			if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
				b, _ := json.Marshal(state.FormatTimestamp(time.UnixMilli(ms)))
				return b
			}
		}
	}
	return raw
}

// musicValues lower-cases the column names of a values object (CQL folds them) and adapts each
// value of a known column (musicValue).
func musicValues(t state.Table, obj map[string]json.RawMessage, what string) (map[string]json.RawMessage, error) {
	out := make(map[string]json.RawMessage, len(obj))
	for name, raw := range obj {
		n := strings.ToLower(name)
		if _, dup := out[n]; dup {
			return nil, invalid("%s: column %s given twice", what, n)
		}
		if col, ok := t.Column(n); ok {
			raw = musicValue(col, raw)
		}
		out[n] = raw
	}
	return out, nil
}

// musicRowKey reads the row's primary key from the query string (MUSIC's row identifier:
// ?column=value for every primary key column).
func musicRowKey(t state.Table, q url.Values) (journal.Row, error) {
	if len(q) == 0 {
		return nil, invalid(musicParameterError)
	}
	byName := map[string]string{}
	for name, vs := range q {
		n := strings.ToLower(name)
		if !t.IsKey(n) {
			return nil, invalid("row identifier %s: not a primary key column of %s.%s (the query string names one row by its primary key %v)", name, t.Keyspace, t.Name, t.KeyColumns())
		}
		byName[n] = vs[0]
	}
	parts := make([]string, 0, len(byName))
	for _, col := range t.KeyColumns() {
		v, ok := byName[col]
		if !ok {
			return nil, invalid("row identifier: %s is missing (the primary key of %s.%s is %v)", col, t.Keyspace, t.Name, t.KeyColumns())
		}
		parts = append(parts, v)
	}
	return state.ParseKey(t, parts)
}

// musicCons is a row operation's consistencyInfo as the state service takes it.
type musicCons struct {
	c    state.Consistency
	lock state.LockRef
}

// musicConsistency maps consistencyInfo: type eventual, critical (with lockId, a lock id of this
// table's key lock) or atomic. An atomic operation takes its own lock: a lockId is ignored, as
// MUSIC does. consistencyInfo.consistency (MUSIC's Cassandra level override) is not used.
func (s *Server) musicConsistency(ctx context.Context, c *call, t state.Table, info map[string]string) (musicCons, error) {
	typ, ok := info["type"]
	if !ok || typ == "" {
		return musicCons{}, invalid(`consistencyInfo.type is missing: want eventual, critical or atomic`)
	}
	switch strings.ToLower(typ) {
	case "eventual":
		return musicCons{c: state.Eventual}, nil
	case "atomic":
		return musicCons{c: state.Atomic}, nil
	case "critical":
		id := info["lockId"]
		if id == "" {
			return musicCons{}, invalid("LockId cannot be null. Create lock and acquire lock or use ATOMIC instead of CRITICAL")
		}
		ref, lt, err := s.musicRefFromID(ctx, c, id, false)
		if err != nil {
			return musicCons{}, err
		}
		if lt.Keyspace != t.Keyspace || lt.Name != t.Name {
			return musicCons{}, invalid("lockId %s is a lock of %s.%s, not of %s.%s", id, lt.Keyspace, lt.Name, t.Keyspace, t.Name)
		}
		return musicCons{c: state.Critical, lock: ref}, nil
	}
	return musicCons{}, invalid("consistencyInfo.type %q: want eventual, critical or atomic", typ)
}

// musicWriteMessage is MUSIC's message of a successful update or delete.
func musicWriteMessage(c state.Consistency) string {
	if c == state.Eventual {
		return "Eventual Operation Successfully performed"
	}
	return "Update performed"
}

// musicConditions maps MUSIC's conditions (column: value, all must hold on the existing row) to a
// compare-and-set condition.
func musicConditions(t state.Table, conds map[string]json.RawMessage) (*state.Condition, error) {
	if conds == nil {
		return nil, nil
	}
	if len(conds) == 0 {
		return nil, invalid("conditions: an empty object (leave it out for an unconditional write)")
	}
	vals, err := musicValues(t, conds, "conditions")
	if err != nil {
		return nil, err
	}
	cond := &state.Condition{}
	for _, n := range slices.Sorted(mapKeys(vals)) {
		col, ok := t.Column(n)
		if !ok || t.IsKey(n) {
			return nil, invalid("conditions: %q is not a regular column of %s.%s", n, t.Keyspace, t.Name)
		}
		v, err := state.ParseJSON(col, vals[n])
		if err != nil {
			return nil, err
		}
		cond.Columns = append(cond.Columns, state.Filter{Column: n, Value: v})
	}
	return cond, nil
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// musicRowPrologue is what every row write starts with: authorization, the body, the table.
func (s *Server) musicRowPrologue(w http.ResponseWriter, r *http.Request, c *call, write bool) (musicRowBody, context.Context, context.CancelFunc, state.Table, error) {
	var body musicRowBody
	ks := musicName(r, "ks")
	if err := c.p.authorize(ks, write); err != nil {
		return body, nil, nil, state.Table{}, err
	}
	if err := s.decodeMusic(w, r, &body, write); err != nil {
		return body, nil, nil, state.Table{}, err
	}
	if err := body.unsupported(); err != nil {
		return body, nil, nil, state.Table{}, err
	}
	// Atomic operations wait for the key's lock as long as the service's default.
	ctx, cancel := s.opContext(r, 0, false)
	t, err := s.state.Table(ctx, ks, musicName(r, "table"))
	if err != nil {
		cancel()
		return body, nil, nil, state.Table{}, err
	}
	return body, ctx, cancel, t, nil
}

func (s *Server) musicWrite(ctx context.Context, c *call, t state.Table, key journal.Row, op state.MutationOp,
	values journal.Row, cond *state.Condition, info map[string]string) (state.Consistency, error) {
	cons, err := s.musicConsistency(ctx, c, t, info)
	if err != nil {
		return 0, err
	}
	done, err := s.admitWrite(t.Keyspace, t.Name, key)
	if err != nil {
		return 0, err
	}
	_, err = s.state.Write(ctx, state.WriteRequest{Keyspace: t.Keyspace, Table: t.Name, Key: key, Op: op, Values: values,
		Consistency: cons.c, Lock: cons.lock, If: cond, RequestID: c.reqID})
	return cons.c, done(err)
}

// musicInsert serves an insert: the values hold the primary key. Like CQL's INSERT it sets the
// columns given and leaves the others.
func (s *Server) musicInsert(w http.ResponseWriter, r *http.Request, c *call) error {
	body, ctx, cancel, t, err := s.musicRowPrologue(w, r, c, true)
	if err != nil {
		return err
	}
	defer cancel()
	if body.Values == nil {
		return invalid("%s (values is missing)", musicBodyMissing)
	}
	if body.Conditions != nil {
		return invalid("an insert takes no conditions: use an update (PUT .../rows) or /conditional/insert")
	}
	vals, err := musicValues(t, body.Values, "values")
	if err != nil {
		return err
	}
	key, values, err := state.ParseValues(t, vals, true)
	if err != nil {
		return err
	}
	op := state.MutUpdate
	if len(values) == 0 {
		op = state.MutPut
	}
	if _, err := s.musicWrite(ctx, c, t, key, op, values, nil, body.ConsistencyInfo); err != nil {
		return err
	}
	return musicOK(w, musicResponse{Message: "Insert Successful"})
}

// musicUpdate serves an update of the row the query string names; conditions make it a
// compare-and-set.
func (s *Server) musicUpdate(w http.ResponseWriter, r *http.Request, c *call) error {
	body, ctx, cancel, t, err := s.musicRowPrologue(w, r, c, true)
	if err != nil {
		return err
	}
	defer cancel()
	if len(body.Values) == 0 {
		return invalid("%s (values is missing)", musicBodyMissing)
	}
	key, err := musicRowKey(t, c.query)
	if err != nil {
		return err
	}
	vals, err := musicValues(t, body.Values, "values")
	if err != nil {
		return err
	}
	for n := range vals {
		if t.IsKey(n) {
			return invalid("values: %s is a primary key column; the query string names the row", n)
		}
	}
	_, values, err := state.ParseValues(t, vals, false)
	if err != nil {
		return err
	}
	cond, err := musicConditions(t, body.Conditions)
	if err != nil {
		return err
	}
	cons, err := s.musicWrite(ctx, c, t, key, state.MutUpdate, values, cond, body.ConsistencyInfo)
	if err != nil {
		return err
	}
	return musicOK(w, musicResponse{Message: musicWriteMessage(cons)})
}

// musicDelete serves a delete of the row the query string names, or of some of its columns
// (columns: set them to null).
func (s *Server) musicDelete(w http.ResponseWriter, r *http.Request, c *call) error {
	body, ctx, cancel, t, err := s.musicRowPrologue(w, r, c, true)
	if err != nil {
		return err
	}
	defer cancel()
	if body.ConsistencyInfo == nil {
		return invalid("%s (consistencyInfo is missing)", musicBodyMissing)
	}
	key, err := musicRowKey(t, c.query)
	if err != nil {
		return err
	}
	op, values := state.MutDelete, journal.Row(nil)
	for _, name := range body.Columns {
		n := strings.ToLower(name)
		if _, ok := t.Column(n); !ok || t.IsKey(n) {
			return invalid("columns: %q is not a regular column of %s.%s", name, t.Keyspace, t.Name)
		}
		op = state.MutUpdate
		values = append(values, journal.Field{Name: n, Value: journal.Null()})
	}
	cond, err := musicConditions(t, body.Conditions)
	if err != nil {
		return err
	}
	cons, err := s.musicWrite(ctx, c, t, key, op, values, cond, body.ConsistencyInfo)
	if err != nil {
		return err
	}
	return musicOK(w, musicResponse{Message: musicWriteMessage(cons)})
}

// musicSelect serves a select: the query string's column=value pairs filter the rows. With
// X-minorVersion 1 and X-patchVersion 0 and a body with consistencyInfo, it is a critical get
// (MUSIC's selectWithCritical).
func (s *Server) musicSelect(w http.ResponseWriter, r *http.Request, c *call) error {
	ks := musicName(r, "ks")
	if err := c.p.authorize(ks, false); err != nil {
		return err
	}
	if r.Header.Get(headerMusicMinor) == "1" && r.Header.Get(headerMusicPatch) == "0" {
		var body musicRowBody
		if err := s.decodeMusic(w, r, &body, false); err != nil {
			return err
		}
		if len(body.ConsistencyInfo) > 0 {
			return s.musicCriticalRead(r, w, c, body)
		}
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	t, err := s.state.Table(ctx, ks, musicName(r, "table"))
	if err != nil {
		return err
	}
	params := map[string]string{}
	for name, vs := range c.query {
		params[strings.ToLower(name)] = vs[0]
	}
	q := state.Query{Limit: state.MaxPageRows}
	if q.Filters, err = state.ParseFilters(t, params); err != nil {
		return err
	}
	result := map[string]map[string]any{}
	for pages := 0; ; pages++ {
		if pages == musicMaxPages {
			return invalid("the select examined too many rows; name the rows by their primary key in the query string")
		}
		page, err := s.state.Select(ctx, t.Keyspace, t.Name, q, state.Eventual)
		if err != nil {
			return err
		}
		for _, row := range page.Rows {
			if len(result) == musicMaxRows {
				return invalid("more than %d rows match; name fewer rows in the query string, or page through them with the native API (/v1)", musicMaxRows)
			}
			result["row "+strconv.Itoa(len(result))] = state.RowJSON(t, row)
		}
		if page.Next == "" {
			break
		}
		q.Page = page.Next
	}
	resp := musicResponse{Result: result}
	if len(result) == 0 {
		resp.Error = "No data found"
	}
	return musicOK(w, resp)
}

// musicCriticalGet serves the deprecated PUT .../rows/criticalget.
func (s *Server) musicCriticalGet(w http.ResponseWriter, r *http.Request, c *call) error {
	if err := c.p.authorize(musicName(r, "ks"), false); err != nil {
		return err
	}
	var body musicRowBody
	if err := s.decodeMusic(w, r, &body, false); err != nil {
		return err
	}
	return s.musicCriticalRead(r, w, c, body)
}

// musicCriticalRead reads the one row the query string names at the body's consistency. A
// critical read by a lock id that does not hold the key's lock is refused (MUSIC answered an
// empty success).
func (s *Server) musicCriticalRead(r *http.Request, w http.ResponseWriter, c *call, body musicRowBody) error {
	if len(body.ConsistencyInfo) == 0 {
		return invalid("%s Missing Body or Consistency type.", musicBodyMissing)
	}
	ctx, cancel := s.opContext(r, 0, false)
	defer cancel()
	t, err := s.state.Table(ctx, musicName(r, "ks"), musicName(r, "table"))
	if err != nil {
		return err
	}
	key, err := musicRowKey(t, c.query)
	if err != nil {
		return err
	}
	cons, err := s.musicConsistency(ctx, c, t, body.ConsistencyInfo)
	if err != nil {
		return err
	}
	row, err := s.state.Read(ctx, state.ReadRequest{Keyspace: t.Keyspace, Table: t.Name, Key: key, Consistency: cons.c, Lock: cons.lock})
	if errors.Is(err, state.ErrNotFound) {
		return musicOK(w, musicResponse{Error: "No data found"})
	}
	if err != nil {
		return err
	}
	return musicOK(w, musicResponse{Result: map[string]map[string]any{"row 0": state.RowJSON(t, row)}})
}
