package feeds

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/musicd/musicd/journal"
)

// Envelope is the JSON body of a change-feed message, close to Debezium's change event value so
// that CDC consumers need little change (docs/feeds.md has a full example):
//
//   - Op is "c" (insert), "u" (update), "d" (delete), "r" (a row read by an initial snapshot) as in Debezium, or one of musicd's own
//     operations, spelled out so that a Debezium consumer switching on letters ignores them:
//     "put" (a keyed write that replaces the row, After), "ddl" (a schema change, DDL) and
//     "mark" (no data change: ownership transfer, fencing, heartbeat).
//   - Before, After and Key are objects of column name to value, in the row's column order, or
//     null when the entry has no such image. Values: null; integers as JSON numbers with every
//     digit (64-bit values are exact in the text: parse them as int64/uint64 or json.Number, not
//     as float64); floats as the shortest JSON number that reads back to the same float, with
//     NaN and infinities as the strings "NaN", "Infinity", "-Infinity"; decimals, temporal
//     values and JSON columns as strings with the database's exact text; bytes as base64
//     (standard, padded) strings; booleans as true/false (decision 0005).
//   - TsMs is the entry's hybrid-logical-clock wall time in milliseconds since 1970.
//   - Truncated is set when the images were left out because the message would exceed the
//     server's maximum payload; the entry is in the journal at Source.Stream, Source.Seq.
type Envelope struct {
	Before      json.RawMessage `json:"before"`
	After       json.RawMessage `json:"after"`
	Key         json.RawMessage `json:"key"`
	Op          string          `json:"op"`
	TsMs        int64           `json:"ts_ms"`
	Source      Source          `json:"source"`
	Transaction *Transaction    `json:"transaction"`
	DDL         *DDL            `json:"ddl,omitempty"`
	Truncated   bool            `json:"truncated,omitempty"`
}

// Source locates the change: where it was captured and where it is in the journal. Strings
// that the entry does not carry are null (GTID, File, RequestID); Pos is 0 then.
type Source struct {
	Version       string  `json:"version"`   // envelope version, "1"
	Connector     string  `json:"connector"` // always "musicd"
	Site          string  `json:"site"`      // origin site of the change
	Database      string  `json:"database"`  // MariaDB database or keyspace
	Table         string  `json:"table"`
	GTID          *string `json:"gtid"`
	File          *string `json:"file"`
	Pos           uint64  `json:"pos"`
	RequestID     *string `json:"request_id"`
	Stream        string  `json:"stream"`
	Seq           uint64  `json:"seq"`
	Epoch         uint64  `json:"epoch"`
	TsMs          int64   `json:"ts_ms"`
	HLC           HLC     `json:"hlc"`
	SchemaVersion uint64  `json:"schema_version"`
}

// HLC is the entry's hybrid logical clock timestamp: last-writer-wins compares (Wall, Logical).
type HLC struct {
	Wall    int64  `json:"wall"` // nanoseconds since 1970
	Logical uint32 `json:"logical"`
}

// Transaction groups the entries of one source transaction: Order is the entry's position in
// it from 0, Total the number of entries (0 when not known when written), Last marks its end.
type Transaction struct {
	ID    string `json:"id"`
	Order uint32 `json:"order"`
	Total uint32 `json:"total"`
	Last  bool   `json:"last"`
}

// DDL describes a schema change: the statement and the table's columns after it.
type DDL struct {
	Statement string      `json:"statement"`
	Columns   []DDLColumn `json:"columns"`
}

// DDLColumn is one column of a table after a schema change.
type DDLColumn struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// EnvelopeVersion is Source.Version. It changes only if a field changes meaning.
const EnvelopeVersion = "1"

// OpCode returns the envelope's op for a journal op.
func OpCode(op journal.Op) string {
	switch op {
	case journal.OpInsert:
		return "c"
	case journal.OpUpdate:
		return "u"
	case journal.OpDelete:
		return "d"
	case journal.OpRead:
		return "r"
	}
	return op.String() // put, ddl, mark
}

// NewEnvelope builds the envelope of e. site is used when the entry names no origin.
func NewEnvelope(e *journal.Entry, site string) Envelope {
	origin := e.Origin
	if origin == "" {
		origin = site
	}
	env := Envelope{
		Before: rowJSON(e.Before),
		After:  rowJSON(e.After),
		Key:    rowJSON(e.Key),
		Op:     OpCode(e.Op),
		TsMs:   e.HLC.Wall / 1e6,
		Source: Source{
			Version:       EnvelopeVersion,
			Connector:     "musicd",
			Site:          origin,
			Database:      e.Database,
			Table:         e.Table,
			GTID:          nullable(e.Source.GTID),
			File:          nullable(e.Source.File),
			Pos:           e.Source.Pos,
			RequestID:     nullable(e.Source.RequestID),
			Stream:        e.Stream,
			Seq:           e.Seq,
			Epoch:         e.Epoch,
			TsMs:          e.HLC.Wall / 1e6,
			HLC:           HLC{Wall: e.HLC.Wall, Logical: e.HLC.Logical},
			SchemaVersion: e.SchemaVersion,
		},
	}
	if e.Tx.ID != "" {
		env.Transaction = &Transaction{ID: e.Tx.ID, Order: e.Tx.Index, Total: e.Tx.Count, Last: e.Tx.Last}
	}
	if e.Op == journal.OpDDL {
		d := &DDL{Statement: e.Statement, Columns: make([]DDLColumn, len(e.Columns))}
		for i, c := range e.Columns {
			d.Columns[i] = DDLColumn{Name: c.Name, Type: c.Type}
		}
		env.DDL = d
	}
	return env
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

var jsonNull = json.RawMessage("null")

// rowJSON renders a row as a JSON object in column order, or null for a nil row.
func rowJSON(r journal.Row) json.RawMessage { return appendRow(nil, r) }

// appendValue renders one value (decision 0005: exact digits, never a float for an integer or a
// decimal).
func appendValue(b []byte, v journal.Value) []byte {
	switch v.Kind {
	case journal.KindInt:
		return strconv.AppendInt(b, v.Int, 10)
	case journal.KindUint:
		return strconv.AppendUint(b, v.Uint, 10)
	case journal.KindFloat32, journal.KindFloat64:
		bits := 64
		if v.Kind == journal.KindFloat32 {
			bits = 32
		}
		switch {
		case math.IsNaN(v.Float):
			return append(b, `"NaN"`...)
		case math.IsInf(v.Float, 1):
			return append(b, `"Infinity"`...)
		case math.IsInf(v.Float, -1):
			return append(b, `"-Infinity"`...)
		}
		return strconv.AppendFloat(b, v.Float, 'g', -1, bits)
	case journal.KindDecimal, journal.KindString, journal.KindTemporal, journal.KindJSON:
		return appendJSONString(b, v.Str)
	case journal.KindBytes:
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, v.Bytes)
		return append(b, '"')
	case journal.KindBool:
		if v.Uint != 0 {
			return append(b, "true"...)
		}
		return append(b, "false"...)
	}
	return append(b, "null"...)
}

// Message headers of every change-feed message.
const (
	HeaderStream = "Music-Stream" // journal stream of the entry
	HeaderSeq    = "Music-Seq"    // seq of the entry in its stream (decimal)
	HeaderOrigin = "Music-Origin" // site that produced the change
)

// MsgID is the JetStream message id of an entry: "<stream>:<seq>", and for the relay's
// re-publications after an out-of-order store, "<stream>:<seq>:<run>" with a run id of its own
// (docs/decisions/0005-feeds.md).
func MsgID(stream string, seq uint64, run string) string {
	id := stream + ":" + strconv.FormatUint(seq, 10)
	if run != "" {
		id += ":" + run
	}
	return id
}

// buildMsg returns the NATS message of e. When the message would exceed maxPayload (0: no limit),
// the images are left out and the envelope marked truncated.
func buildMsg(subjects Subjects, e *journal.Entry, site, run string, maxPayload int64) (*nats.Msg, error) {
	b := newMsgBuilder(subjects, site, maxPayload)
	b.expect(1)
	return b.build(e, run)
}

// msgBuilder builds messages as buildMsg describes. The relay builds every message it publishes
// with one builder per turn, told how many messages are coming (expect), so that it allocates
// for many at a time: bodies are cut from shared buffers, messages and header values come from
// arrays, and a subject is reused while entries stay on one table and op. The header values of
// a message share one string (the seq is part of the message id). Allocation and the garbage
// collection it causes were most of the relay's own CPU time. A message, once returned, is
// never changed by the builder again. Not safe for concurrent use.
type msgBuilder struct {
	subjects   Subjects
	site       string
	maxPayload int64 // 0: no limit

	ahead   int        // messages expected from now on, this one included
	bodyLen int        // length of the last body: the estimate for the next ones
	buf     []byte     // unused rest of the current body buffer (len 0)
	vals    []string   // unused header values
	msgs    []nats.Msg // unused messages

	lastKey     subjectKey // subject of the last entry, the most likely for the next
	lastSubject string
	subject     map[subjectKey]string // subjects seen before (bounded)
}

func newMsgBuilder(subjects Subjects, site string, maxPayload int64) *msgBuilder {
	return &msgBuilder{subjects: subjects, site: site, maxPayload: maxPayload, bodyLen: 512}
}

type subjectKey struct {
	database, table string
	op              journal.Op
}

const (
	maxBodyChunk  = 64 << 10 // largest body buffer allocated at a time
	maxBatch      = 64       // most messages (and their header values) allocated at a time
	maxSubjects   = 256      // subjects kept for reuse
	headerKeysLen = len(nats.MsgIdHdr) + len(HeaderStream) + len(HeaderSeq) + len(HeaderOrigin)
)

// expect tells b that n more messages are coming (a hint).
func (b *msgBuilder) expect(n int) { b.ahead = n }

func (b *msgBuilder) changes(e *journal.Entry) string {
	k := subjectKey{e.Database, e.Table, e.Op}
	if k == b.lastKey && b.lastSubject != "" {
		return b.lastSubject
	}
	s, ok := b.subject[k]
	if !ok {
		s = b.subjects.Changes(e.Database, e.Table, e.Op)
		if b.lastSubject != "" { // a second subject: keep them
			if b.subject == nil || len(b.subject) >= maxSubjects {
				b.subject = make(map[subjectKey]string)
			}
			b.subject[k] = s
		}
	}
	b.lastKey, b.lastSubject = k, s
	return s
}

// body returns the envelope of e, with capacity = length.
func (b *msgBuilder) body(e *journal.Entry, truncated bool) []byte {
	if cap(b.buf) < b.bodyLen {
		b.buf = make([]byte, 0, min(maxBodyChunk, max(1, b.ahead)*(b.bodyLen+b.bodyLen/4)))
	}
	data := appendEnvelope(b.buf, e, b.site, truncated)
	b.bodyLen = len(data)
	switch {
	case len(data) <= cap(b.buf): // written in place: the rest of the buffer is for the next
		b.buf = b.buf[len(data):len(data)]
	case len(data) < maxBodyChunk/4: // did not fit in the rest (append gave it a buffer of its own)
		b.buf = nil
	} // else: a large body, with a buffer of its own; the rest is for the next
	return data[:len(data):len(data)]
}

func (b *msgBuilder) build(e *journal.Entry, run string) (*nats.Msg, error) {
	origin := e.Origin
	if origin == "" {
		origin = b.site
	}
	// One string holds the message id, MsgID(e.Stream, e.Seq, run), and the seq within it.
	var idb [128]byte
	id := append(idb[:0], e.Stream...)
	id = append(id, ':')
	seqAt := len(id)
	id = strconv.AppendUint(id, e.Seq, 10)
	seqEnd := len(id)
	if run != "" {
		id = append(id, ':')
		id = append(id, run...)
	}
	ids := string(id)

	n := min(maxBatch, max(1, b.ahead))
	b.ahead--
	if len(b.vals) < 4 {
		b.vals = make([]string, 4*n)
	}
	v := b.vals[:4:4]
	b.vals = b.vals[4:]
	v[0], v[1], v[2], v[3] = ids, e.Stream, ids[seqAt:seqEnd], origin
	if len(b.msgs) == 0 {
		b.msgs = make([]nats.Msg, n)
	}
	m := &b.msgs[0]
	b.msgs = b.msgs[1:]
	m.Subject = b.changes(e)
	m.Header = nats.Header{
		nats.MsgIdHdr: v[0:1:1],
		HeaderStream:  v[1:2:2],
		HeaderSeq:     v[2:3:3],
		HeaderOrigin:  v[3:4:4],
	}
	// "NATS/1.0\r\n", "<key>: <value>\r\n" per header, and the final "\r\n"
	hdrSize := 10 + headerKeysLen + 4*4 + len(v[0]) + len(v[1]) + len(v[2]) + len(v[3]) + 2
	data := b.body(e, false)
	if b.maxPayload > 0 && int64(len(data)+hdrSize) > b.maxPayload {
		data = b.body(e, true)
		if int64(len(data)+hdrSize) > b.maxPayload {
			return nil, fmt.Errorf("stream %s seq %d: message of %d bytes even without images (max payload %d)", e.Stream, e.Seq, len(data), b.maxPayload)
		}
	}
	m.Data = data
	return m, nil
}

// DecodeEnvelope parses a change-feed message body. Numbers in Before, After and Key stay
// json.RawMessage; decode them with a json.Decoder that has UseNumber set to keep every digit.
func DecodeEnvelope(data []byte) (Envelope, error) {
	var env Envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	err := dec.Decode(&env)
	return env, err
}
