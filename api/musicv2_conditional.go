package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/state"
)

// MUSIC's conditional API (/conditional/insert and /conditional/update), made by ONAP's
// conductor for "plans": a row whose cascade column maps plan keys to plan entries (objects of
// strings, one of them "status"). MUSIC keeps the cascade column as a map<text,text> of JSON
// strings; musicd has no collection types, so here it is a text column holding one JSON object
// {"<plan key>": {"<field>": "<value>", ...}, ...}.
//
// Both are a compare-and-set loop on the state service: read the row, compute the new cascade
// value, write it on the condition that the row is still the one read (its version, or its
// absence). A lost race reads again, under the key's lock, at most musicCASAttempts times.

const musicCASAttempts = 4

// musicConditionalBody is MUSIC's JsonConditional (the spelling casscade is MUSIC's).
type musicConditionalBody struct {
	PrimaryKey         string                     `json:"primaryKey"`
	PrimaryKeyValue    json.RawMessage            `json:"primaryKeyValue"`
	CasscadeColumnName string                     `json:"casscadeColumnName"`
	TableValues        map[string]json.RawMessage `json:"tableValues"`
	CasscadeColumnData struct {
		Key   json.RawMessage            `json:"key"`
		Value map[string]json.RawMessage `json:"value"`
	} `json:"casscadeColumnData"`
	Conditions map[string]map[string]string `json:"conditions"`
}

// jsonText is a JSON value as text: a string's contents, anything else as written.
func jsonText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return strings.TrimSpace(string(raw))
}

// musicConditional is a validated conditional request.
type musicConditional struct {
	t       state.Table
	key     journal.Row
	cascade string            // the cascade column
	plan    string            // the plan key
	entry   map[string]string // the plan entry's fields given
	values  journal.Row       // tableValues: regular columns
	// exists and nonexists are the statuses an insert gives the plan entry (conditions).
	exists, nonexists string
}

// parse checks the body against the table: the primary key is one column named primaryKey, the
// cascade column is a text column, tableValues are columns of the table.
func (b musicConditionalBody) parse(t state.Table, insert bool) (musicConditional, error) {
	m := musicConditional{t: t, cascade: strings.ToLower(b.CasscadeColumnName), entry: map[string]string{}}
	missing := b.PrimaryKey == "" || len(b.PrimaryKeyValue) == 0 || m.cascade == "" ||
		len(b.CasscadeColumnData.Key) == 0 || len(b.CasscadeColumnData.Value) == 0
	if insert {
		missing = missing || len(b.TableValues) == 0 || b.Conditions["exists"]["status"] == "" || b.Conditions["nonexists"]["status"] == ""
	}
	if missing {
		return m, invalid("One or more input values missing: primaryKey, primaryKeyValue, casscadeColumnName, casscadeColumnData {key, value}%s",
			map[bool]string{true: ", tableValues, conditions {exists: {status}, nonexists: {status}}"}[insert])
	}
	pk := strings.ToLower(b.PrimaryKey)
	if kc := t.KeyColumns(); len(kc) != 1 || kc[0] != pk {
		return m, invalid("primaryKey %s: the primary key of %s.%s is %v; the conditional API needs a table keyed by that one column", b.PrimaryKey, t.Keyspace, t.Name, kc)
	}
	if col, ok := t.Column(m.cascade); !ok || col.Type != state.Text || t.IsKey(m.cascade) {
		return m, invalid("casscadeColumnName %s: want a text column of %s.%s (it holds the JSON object of plan entries)", b.CasscadeColumnName, t.Keyspace, t.Name)
	}
	var err error
	if m.key, err = state.ParseKey(t, []string{jsonText(b.PrimaryKeyValue)}); err != nil {
		return m, err
	}
	m.plan = jsonText(b.CasscadeColumnData.Key)
	m.exists, m.nonexists = b.Conditions["exists"]["status"], b.Conditions["nonexists"]["status"]
	for k, v := range b.CasscadeColumnData.Value {
		m.entry[k] = jsonText(v)
	}
	vals, err := musicValues(t, b.TableValues, "tableValues")
	if err != nil {
		return m, err
	}
	if raw, ok := vals[pk]; ok {
		col, _ := t.Column(pk)
		v, err := state.ParseJSON(col, raw)
		if err != nil {
			return m, err
		}
		if !v.Equal(m.key[0].Value) {
			return m, invalid("tableValues.%s is not primaryKeyValue", pk)
		}
		delete(vals, pk)
	}
	if _, ok := vals[m.cascade]; ok {
		return m, invalid("tableValues: %s is the cascade column; give its entry in casscadeColumnData", m.cascade)
	}
	_, m.values, err = state.ParseValues(t, vals, false)
	return m, err
}

// plans reads the cascade column of a row: plan key to plan entry.
func (m musicConditional) plans(row state.StoredRow) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	for _, f := range row.Values {
		if f.Name != m.cascade || f.Value.Kind == journal.KindNull || f.Value.Str == "" {
			continue
		}
		if err := json.Unmarshal([]byte(f.Value.Str), &out); err != nil {
			return nil, invalid("column %s of this row does not hold a JSON object of plan entries: %v", m.cascade, err)
		}
	}
	return out, nil
}

// cascadeField renders the plans as the cascade column's value.
func (m musicConditional) cascadeField(plans map[string]map[string]string) journal.Field {
	b, _ := json.Marshal(plans)
	return journal.Field{Name: m.cascade, Value: journal.String(string(b))}
}

// musicCAS runs the compare-and-set loop: next computes, from the row as read (found or not),
// the values to write and the message of success, or a failure to answer.
func (s *Server) musicCAS(w http.ResponseWriter, r *http.Request, c *call, insert bool,
	next func(m musicConditional, row state.StoredRow, found bool) (journal.Row, string, error)) error {
	ks := musicName(r, "ks")
	if err := c.p.authorize(ks, true); err != nil {
		return err
	}
	var body musicConditionalBody
	if err := s.decodeMusic(w, r, &body, true); err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, false)
	defer cancel()
	t, err := s.state.Table(ctx, ks, musicName(r, "table"))
	if err != nil {
		return err
	}
	m, err := body.parse(t, insert)
	if err != nil {
		return err
	}
	done, err := s.admitWrite(t.Keyspace, t.Name, m.key)
	if err != nil {
		return err
	}
	finished := false
	defer func() {
		if !finished {
			_ = done(nil) // ends the write's time in flight
		}
	}()
	for attempt := 0; attempt < musicCASAttempts; attempt++ {
		cons := state.Eventual
		if attempt > 0 {
			cons = state.Atomic // lost a race: read the latest, under the key's lock
		}
		row, err := s.state.Read(ctx, state.ReadRequest{Keyspace: t.Keyspace, Table: t.Name, Key: m.key, Consistency: cons})
		found := err == nil
		if err != nil && !errors.Is(err, state.ErrNotFound) {
			return err
		}
		values, msg, err := next(m, row, found)
		if err != nil {
			return err
		}
		cond := &state.Condition{Absent: true}
		if found {
			cond = &state.Condition{Version: row.Version}
		}
		_, err = s.state.Write(ctx, state.WriteRequest{Keyspace: t.Keyspace, Table: t.Name, Key: m.key, Op: state.MutUpdate,
			Values: values, Consistency: state.Eventual, If: cond, RequestID: c.reqID})
		if errors.Is(err, state.ErrConditionFailed) {
			continue
		}
		finished = true
		if err := done(err); err != nil {
			return err
		}
		return musicOK(w, musicResponse{Message: msg})
	}
	return &apiError{status: http.StatusPreconditionFailed, code: codeConditionFailed,
		msg: "the row kept changing under the conditional write; nothing was written, retry"}
}

// musicConditionalInsert: no row, insert tableValues with the plan entry and the nonexists
// status; a row, set the plan entry with the exists status.
func (s *Server) musicConditionalInsert(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.musicCAS(w, r, c, true, func(m musicConditional, row state.StoredRow, found bool) (journal.Row, string, error) {
		entry := map[string]string{}
		for k, v := range m.entry {
			entry[k] = v
		}
		if !found {
			entry["status"] = m.nonexists
			values := append(append(journal.Row{}, m.values...), m.cascadeField(map[string]map[string]string{m.plan: entry}))
			return values, "Insert values: ", nil
		}
		plans, err := m.plans(row)
		if err != nil {
			return nil, "", err
		}
		entry["status"] = m.exists
		plans[m.plan] = entry
		b, _ := json.Marshal(map[string]map[string]string{m.plan: entry})
		return journal.Row{m.cascadeField(plans)}, "Update values: " + string(b), nil
	})
}

// musicConditionalUpdate: the row must exist; the plan entry's fields given are set, and the
// tableValues written with it.
func (s *Server) musicConditionalUpdate(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.musicCAS(w, r, c, false, func(m musicConditional, row state.StoredRow, found bool) (journal.Row, string, error) {
		if !found {
			return nil, "", invalid("Cannot find data related to key: %s", m.key[0].Name)
		}
		plans, err := m.plans(row)
		if err != nil {
			return nil, "", err
		}
		entry := plans[m.plan]
		if entry == nil {
			entry = map[string]string{}
		}
		for k, v := range m.entry {
			entry[k] = v
		}
		plans[m.plan] = entry
		return append(append(journal.Row{}, m.values...), m.cascadeField(plans)), "update success", nil
	})
}
