package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/state"
	"github.com/musicd/musicd/state/queue"
)

// MUSIC's priority queue (/MUSIC/rest/v2/priorityq/...) over musicQ (state/queue). A priorityq
// "table" is a musicQ queue (namespace = keyspace, name = table) whose definition keeps the
// table's columns and keys (queue.Def.Schema); a row is a job:
//
//   - its id is a hash of the row's primary key values, so an insert of an existing key finds
//     the row, and update, delete and filter address it;
//   - its payload is the row's values, a JSON object of column values;
//   - its priority comes from the priority column, the table's first clustering column (an int,
//     bigint or varint), whose values 0-15 map onto musicQ's 16 levels in clusteringOrder: ASC
//     (CQL's default) puts 0 first (level 15 - value), DESC puts 15 first (level = value).
//
// Rows are read and written through the queue service only: every change is one conditional
// write of the job's row, like a claim, so a row a /v1 worker has claimed is never lost or
// duplicated by a priorityq update or delete; those are refused while it is claimed.
// docs/music-v2.md describes the mapping and the differences from MUSIC.

// musicPQLevels is the number of priority levels of a priorityq queue: values 0-15.
const musicPQLevels = queue.MaxPriorities

// musicPQScan bounds the rows a filter or a peek with conditions examines (one bounded read of
// the queue's shard): a bigger queue is addressed by whole primary keys.
const musicPQScan = 1000

// musicPQSchema is what a priorityq queue keeps in queue.Def.Schema.
type musicPQSchema struct {
	Table state.Table `json:"table"`
	// Priority is the priority column (the first clustering column); Desc: clusteringOrder
	// DESC, the highest value first.
	Priority string `json:"priority"`
	Desc     bool   `json:"desc,omitempty"`
}

// level maps a priority column value to the queue's level, refusing values out of range.
func (m musicPQSchema) level(v journal.Value) (int, error) {
	if v.Kind != journal.KindInt || v.Int < 0 || v.Int >= musicPQLevels {
		order := "ASC: 0 comes first"
		if m.Desc {
			order = "DESC: 15 comes first"
		}
		return 0, invalid("%s: the priority column's values must be integers 0-%d (clusteringOrder %s %s), not %s",
			m.Priority, musicPQLevels-1, m.Priority, order, jsonText(mustJSON(state.ToJSON(state.Column{Type: state.Bigint}, v))))
	}
	if m.Desc {
		return int(v.Int), nil
	}
	return musicPQLevels - 1 - int(v.Int), nil
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

// musicPQID is the job id of a row: a hash of its primary key values (valid as a job id whatever
// the values are).
func musicPQID(t state.Table, key journal.Row) string {
	vals := make([]any, len(key))
	for i, f := range key {
		col, _ := t.Column(f.Name)
		vals[i] = state.ToJSON(col, f.Value)
	}
	h := sha256.Sum256(mustJSON(vals))
	return "pq-" + hex.EncodeToString(h[:20])
}

// musicPQ is a priorityq request's queue.
type musicPQ struct {
	ns, name string
	schema   musicPQSchema
}

// musicPQRoutes are the priorityq routes: MUSIC's RestMusicQAPI.
func (s *Server) musicPQRoutes() []musicRoute {
	q := musicBase + "/priorityq/keyspaces/{ks}/{qname}"
	return []musicRoute{
		{pattern: "POST " + q, h: s.musicPQCreate, queue: true},
		{pattern: "DELETE " + q, h: s.musicPQDrop, queue: true},
		{pattern: "POST " + q + "/rows", h: s.musicPQInsert, queue: true},
		{pattern: "PUT " + q + "/rows", h: s.musicPQUpdate, queue: true},
		{pattern: "DELETE " + q + "/rows", h: s.musicPQDelete, queue: true},
		{pattern: "GET " + q + "/peek", h: s.musicPQPeek, queue: true},
		{pattern: "GET " + q + "/filter", h: s.musicPQFilter, queue: true},
	}
}

// musicPQContext is a priorityq operation's context.
func (s *Server) musicPQContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
}

// musicPQLoad authorizes the request and reads its queue, which must be a priorityq one.
func (s *Server) musicPQLoad(ctx context.Context, r *http.Request, c *call, write bool) (musicPQ, error) {
	pq := musicPQ{ns: musicName(r, "ks"), name: musicName(r, "qname")}
	if err := c.p.authorize(pq.ns, write); err != nil {
		return pq, err
	}
	d, err := s.deps.Queues.Queue(ctx, pq.ns, pq.name)
	if err != nil {
		return pq, err
	}
	if d.Schema == "" || json.Unmarshal([]byte(d.Schema), &pq.schema) != nil || pq.schema.Priority == "" {
		return pq, invalid("queue %s.%s is not a priorityq queue (it was created through /v1/queues)", pq.ns, pq.name)
	}
	return pq, nil
}

func (s *Server) musicPQCreate(w http.ResponseWriter, r *http.Request, c *call) error {
	ks, name := musicName(r, "ks"), musicName(r, "qname")
	if err := c.p.authorize(ks, true); err != nil {
		return err
	}
	var body musicTableBody
	if err := s.decodeMusic(w, r, &body, true); err != nil {
		return err
	}
	switch {
	case len(body.Fields) == 0 || string(body.Fields) == "null" || strings.Join(strings.Fields(string(body.Fields)), "") == "{}":
		return invalid("CreateQ/Required table fields are empty or not set")
	case strings.TrimSpace(body.ClusteringOrder) == "":
		return invalid("CreateQ: Clustering Order cannot be empty")
	}
	order := body.ClusteringOrder
	body.ClusteringOrder = "" // the order is the priority's, below
	t, err := musicTable(ks, name, body)
	if err != nil {
		return err
	}
	if len(t.Clustering) == 0 {
		return invalid("CreateQ: Clustering key cannot be empty (its first column is the priority)")
	}
	m := musicPQSchema{Table: t, Priority: t.Clustering[0]}
	for _, part := range strings.Split(order, ",") {
		f := strings.Fields(part)
		if len(f) == 1 {
			f = append(f, "ASC")
		}
		if len(f) != 2 || !t.IsKey(strings.ToLower(f[0])) || slices.Contains(t.PartitionKey, strings.ToLower(f[0])) ||
			(!strings.EqualFold(f[1], "ASC") && !strings.EqualFold(f[1], "DESC")) {
			return invalid("CreateQ: clusteringOrder %q: want clustering columns, each ASC or DESC (\"%s DESC\")", order, m.Priority)
		}
		if strings.ToLower(f[0]) == m.Priority {
			m.Desc = strings.EqualFold(f[1], "DESC")
		}
	}
	if col, _ := t.Column(m.Priority); col.Type != state.Int && col.Type != state.Bigint {
		return invalid("CreateQ: the priority column %s (the first clustering column) must be int, bigint or varint, not %s", m.Priority, col.Type)
	}
	ctx, cancel := s.musicPQContext(r)
	defer cancel()
	if _, err := s.deps.Queues.Queue(ctx, ks, name); err == nil {
		return invalid("already exists: queue %s.%s", ks, name)
	} else if !errors.Is(err, state.ErrNotFound) {
		return err
	}
	schema, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := s.deps.Queues.CreateQueue(ctx, queue.Def{Namespace: ks, Name: name, Priorities: musicPQLevels, Shards: 1,
		Schema: string(schema)}); err != nil {
		return err
	}
	return musicOK(w, musicResponse{Message: "TableName " + name + " Created under keyspace " + ks})
}

func (s *Server) musicPQDrop(w http.ResponseWriter, r *http.Request, c *call) error {
	ctx, cancel := s.musicPQContext(r)
	defer cancel()
	pq, err := s.musicPQLoad(ctx, r, c, true)
	if err != nil {
		return err
	}
	if err := s.deps.Queues.DropQueue(ctx, pq.ns, pq.name); err != nil {
		return err
	}
	return musicOK(w, musicResponse{})
}

// musicPQWrite checks a row write's body: values (required for insert and update),
// consistencyInfo (eventual or atomic: both are one conditional write), no ttl, timestamp,
// conditions or columns.
func musicPQWrite(body musicRowBody, needValues bool) (string, error) {
	if needValues && len(body.Values) == 0 {
		return "", invalid("Required HTTP Request body is missing. (values is missing)")
	}
	if err := body.unsupported(); err != nil {
		return "", err
	}
	if body.Conditions != nil {
		return "", invalid("conditions are not supported on priorityq rows")
	}
	if body.Columns != nil {
		return "", invalid("columns are not supported on priorityq rows: update them (PUT .../rows) instead")
	}
	switch typ := strings.ToLower(body.ConsistencyInfo["type"]); typ {
	case "eventual":
		return musicWriteMessage(state.Eventual), nil
	case "atomic":
		return musicWriteMessage(state.Atomic), nil
	case "":
		return "", invalid("consistencyInfo.type is missing: eventual or atomic")
	case "critical":
		return "", invalid("consistencyInfo.type critical: priorityq rows are not locked; use eventual or atomic (every priorityq write is one conditional write)")
	default:
		return "", invalid("consistencyInfo.type %q: want eventual or atomic", typ)
	}
}

// musicPQRow is a row of the request: its key, id and values.
type musicPQRow struct {
	key    journal.Row
	id     string
	level  int
	values map[string]any // column: JSON form
}

// parseRow reads the row's key (from values, or from the query string) and its regular values.
func (pq musicPQ) parseRow(c *call, vals map[string]json.RawMessage, keyInValues bool) (musicPQRow, error) {
	t := pq.schema.Table
	var row musicPQRow
	norm, err := musicValues(t, vals, "values")
	if err != nil {
		return row, err
	}
	var values journal.Row
	if keyInValues {
		row.key, values, err = state.ParseValues(t, norm, true)
	} else {
		for n := range norm {
			if n == pq.schema.Priority {
				return row, invalid("values: %s is the priority column, part of the row's key; delete the row and insert it with the new priority", n)
			}
			if t.IsKey(n) {
				return row, invalid("values: %s is a primary key column; the query string names the row", n)
			}
		}
		if _, values, err = state.ParseValues(t, norm, false); err == nil {
			row.key, err = musicRowKey(t, c.query)
		}
	}
	if err != nil {
		return row, err
	}
	row.id = musicPQID(t, row.key)
	row.values = map[string]any{}
	for _, f := range append(slices.Clone(row.key), values...) {
		col, _ := t.Column(f.Name)
		row.values[f.Name] = state.ToJSON(col, f.Value)
		if f.Name == pq.schema.Priority {
			if row.level, err = pq.schema.level(f.Value); err != nil {
				return row, err
			}
		}
	}
	return row, nil
}

// upsert writes a row as CQL does: a new row is inserted; an existing one gets the values
// given, its other columns kept. A row a worker has claimed is refused (queue.ErrClaimed).
func (s *Server) musicPQUpsert(ctx context.Context, pq musicPQ, row musicPQRow) error {
	for range 3 {
		payload, err := json.Marshal(row.values)
		if err != nil {
			return err
		}
		_, dup, err := s.deps.Queues.Enqueue(ctx, pq.ns, pq.name, queue.NewJob{ID: row.id, Payload: payload, Priority: row.level, Unique: true})
		if err != nil || !dup {
			return musicPQError(err)
		}
		cur, err := s.deps.Queues.Job(ctx, pq.ns, pq.name, row.id)
		if errors.Is(err, state.ErrNotFound) {
			continue // deleted meanwhile: insert again
		}
		if err != nil {
			return err
		}
		merged, err := musicPQValues(cur.Payload)
		if err != nil {
			return err
		}
		for k, v := range row.values {
			merged[k] = v
		}
		if payload, err = json.Marshal(merged); err != nil {
			return err
		}
		_, err = s.deps.Queues.UpdateJob(ctx, pq.ns, pq.name, row.id, queue.JobChange{Payload: payload})
		if errors.Is(err, state.ErrNotFound) {
			continue
		}
		return musicPQError(err)
	}
	return &apiError{status: http.StatusServiceUnavailable, code: codeUnavailable, msg: "the row kept changing; try again"}
}

// musicPQError says what a refusal of a claimed row means.
func musicPQError(err error) error {
	if errors.Is(err, queue.ErrClaimed) {
		return invalid("the row is being processed by a worker (its job is claimed through /v1/queues); it cannot be changed or deleted until the claim ends")
	}
	return err
}

// musicPQValues reads a job's payload (numbers kept exact).
func musicPQValues(payload []byte) (map[string]any, error) {
	out := map[string]any{}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil {
		return nil, errors.New("a priorityq job's payload is not a JSON object: " + err.Error())
	}
	return out, nil
}

func (s *Server) musicPQInsert(w http.ResponseWriter, r *http.Request, c *call) error {
	ctx, cancel := s.musicPQContext(r)
	defer cancel()
	var body musicRowBody
	if err := s.decodeMusic(w, r, &body, true); err != nil {
		return err
	}
	if _, err := musicPQWrite(body, true); err != nil {
		return err
	}
	pq, err := s.musicPQLoad(ctx, r, c, true)
	if err != nil {
		return err
	}
	row, err := pq.parseRow(c, body.Values, true)
	if err != nil {
		return err
	}
	if err := s.musicPQUpsert(ctx, pq, row); err != nil {
		return err
	}
	return musicOK(w, musicResponse{Message: "Insert Successful"})
}

func (s *Server) musicPQUpdate(w http.ResponseWriter, r *http.Request, c *call) error {
	ctx, cancel := s.musicPQContext(r)
	defer cancel()
	var body musicRowBody
	if err := s.decodeMusic(w, r, &body, true); err != nil {
		return err
	}
	msg, err := musicPQWrite(body, true)
	if err != nil {
		return err
	}
	pq, err := s.musicPQLoad(ctx, r, c, true)
	if err != nil {
		return err
	}
	row, err := pq.parseRow(c, body.Values, false)
	if err != nil {
		return err
	}
	if err := s.musicPQUpsert(ctx, pq, row); err != nil {
		return err
	}
	return musicOK(w, musicResponse{Message: msg})
}

func (s *Server) musicPQDelete(w http.ResponseWriter, r *http.Request, c *call) error {
	ctx, cancel := s.musicPQContext(r)
	defer cancel()
	var body musicRowBody
	if err := s.decodeMusic(w, r, &body, true); err != nil {
		return err
	}
	msg, err := musicPQWrite(body, false)
	if err != nil {
		return err
	}
	pq, err := s.musicPQLoad(ctx, r, c, true)
	if err != nil {
		return err
	}
	key, err := musicRowKey(pq.schema.Table, c.query)
	if err != nil {
		return err
	}
	// Like CQL's DELETE, deleting a row that is not there succeeds.
	if _, err := s.deps.Queues.DeleteJob(ctx, pq.ns, pq.name, musicPQID(pq.schema.Table, key)); err != nil && !errors.Is(err, state.ErrNotFound) {
		return musicPQError(err)
	}
	return musicOK(w, musicResponse{Message: msg})
}

// musicPQMatch selects the rows of the query string's conditions (column=value, any column):
// by id when they name the whole primary key, else among at most musicPQScan jobs. The jobs are
// in claim order: priority (highest first), due time, id.
func (s *Server) musicPQMatch(ctx context.Context, pq musicPQ, c *call) ([]queue.Job, error) {
	t := pq.schema.Table
	params := map[string]string{}
	for name, vs := range c.query {
		params[strings.ToLower(name)] = vs[0]
	}
	filters, err := state.ParseFilters(t, params)
	if err != nil {
		return nil, err
	}
	var jobs []queue.Job
	if key, err := musicRowKey(t, c.query); err == nil && len(params) == len(t.KeyColumns()) {
		j, err := s.deps.Queues.Job(ctx, pq.ns, pq.name, musicPQID(t, key))
		if errors.Is(err, state.ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		jobs = []queue.Job{j}
	} else {
		jobs, err = s.deps.Queues.Jobs(ctx, pq.ns, pq.name, musicPQScan)
		if err != nil {
			if errors.Is(err, state.ErrInvalid) {
				return nil, invalid("the priority queue holds more than %d rows: name one row by its whole primary key %v", musicPQScan, t.KeyColumns())
			}
			return nil, err
		}
	}
	var out []queue.Job
	for _, j := range jobs {
		vals, err := musicPQValues(j.Payload)
		if err != nil {
			return nil, err
		}
		ok := true
		for _, f := range filters {
			col, _ := t.Column(f.Column)
			got, err := state.ParseJSON(col, mustJSON(vals[f.Column]))
			if err != nil || !bytes.Equal(mustJSON(state.ToJSON(col, got)), mustJSON(state.ToJSON(col, f.Value))) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, j)
		}
	}
	slices.SortFunc(out, func(a, b queue.Job) int {
		switch {
		case a.Priority != b.Priority:
			return b.Priority - a.Priority
		case a.Due != b.Due:
			if a.Due < b.Due {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// musicPQResult renders rows as MUSIC does: {"row 0": {column: value}}, every column of the
// table (null when unset).
func (pq musicPQ) result(jobs []queue.Job) (map[string]map[string]any, error) {
	out := map[string]map[string]any{}
	for _, j := range jobs {
		vals, err := musicPQValues(j.Payload)
		if err != nil {
			return nil, err
		}
		row := map[string]any{}
		for _, col := range pq.schema.Table.Columns {
			row[col.Name] = vals[col.Name]
		}
		out["row "+strconv.Itoa(len(out))] = row
	}
	return out, nil
}

// musicPQPeek returns the top row: the next a claim would take (due, highest priority, then
// earliest); with conditions, the top ready row among those matching.
func (s *Server) musicPQPeek(w http.ResponseWriter, r *http.Request, c *call) error {
	ctx, cancel := s.musicPQContext(r)
	defer cancel()
	pq, err := s.musicPQLoad(ctx, r, c, false)
	if err != nil {
		return err
	}
	var top []queue.Job
	if len(c.query) == 0 {
		if top, err = s.deps.Queues.Peek(ctx, pq.ns, pq.name, 1); err != nil {
			return err
		}
	} else {
		jobs, err := s.musicPQMatch(ctx, pq, c)
		if err != nil {
			return err
		}
		for _, j := range jobs {
			if j.Token == "" && j.Died == 0 {
				top = []queue.Job{j}
				break
			}
		}
	}
	result, err := pq.result(top)
	if err != nil {
		return err
	}
	return musicOK(w, musicResponse{Result: result})
}

// musicPQFilter returns the rows matching the query string's conditions (every row without
// any): ready, claimed and dead-lettered alike, in claim order.
func (s *Server) musicPQFilter(w http.ResponseWriter, r *http.Request, c *call) error {
	ctx, cancel := s.musicPQContext(r)
	defer cancel()
	pq, err := s.musicPQLoad(ctx, r, c, false)
	if err != nil {
		return err
	}
	jobs, err := s.musicPQMatch(ctx, pq, c)
	if err != nil {
		return err
	}
	result, err := pq.result(jobs)
	if err != nil {
		return err
	}
	resp := musicResponse{Result: result}
	if len(result) == 0 {
		resp.Error = "No data found"
	}
	return musicOK(w, resp)
}
