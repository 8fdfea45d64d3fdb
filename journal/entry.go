package journal

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// Op is what an entry does.
type Op uint8

// Operations. Values are part of the encoding: never renumber.
const (
	OpInvalid Op = 0
	OpInsert  Op = 1 // a new row (After)
	OpUpdate  Op = 2 // a changed row (Before and After)
	OpDelete  Op = 3 // a removed row (Before)
	OpDDL     Op = 4 // a schema change (Statement, Columns)
	OpPut     Op = 5 // a keyed write that replaces the row whatever it was (REST upsert: After)
	OpMark    Op = 6 // a marker with no data change (ownership transfer, fencing, heartbeat)
	OpRead    Op = 7 // a row as an initial snapshot read it (After): applied as an insert that may find the row there
	opMax     Op = 7
)

// SnapshotStateTx is the Tx.ID of a binlog capture's snapshot state marks (OpMark): their Table
// names the table an initial snapshot is reading, empty when none is. Appliers read them on the
// target's own capture stream.
const SnapshotStateTx = "snapshot-state"

var opNames = [...]string{"invalid", "insert", "update", "delete", "ddl", "put", "mark", "read"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Entry is one change in one stream. Stream, Seq and Epoch are set by the writer (Seq contiguous
// within a batch, starting at the stream's head + 1); the store refuses an Epoch older than the
// stream's. The other fields describe the change and are carried as they are.
type Entry struct {
	Stream string
	Seq    uint64
	Epoch  uint64
	// HLC orders causally related entries across sites; last-writer-wins compares it.
	HLC Timestamp
	// Origin is the site that produced the change.
	Origin string
	Source Source
	Tx     Tx
	Op     Op
	// Database is the MariaDB database or the keyspace; Table the table.
	Database string
	Table    string
	// Key holds the primary key columns; Before and After the row images (nil when absent).
	Key    Row
	Before Row
	After  Row
	// SchemaVersion identifies the table schema the images were decoded with.
	SchemaVersion uint64
	// Statement and Columns describe a DDL entry: the statement and the resulting columns.
	Statement string
	Columns   []Column
}

// Source locates the change where it was captured: a binlog position or a REST request.
type Source struct {
	GTID      string // MariaDB/MySQL GTID of the source transaction, e.g. "1-1-42"
	File      string // binlog file name
	Pos       uint64 // binlog position of the event
	RequestID string // REST request id
	// Position is where capture resumes after this entry: the source's whole GTID position (one
	// GTID per domain, e.g. "1-1-42,2-2-7"). Set on the last entry of each captured transaction.
	Position string
}

// Tx groups entries of one source transaction. A transaction may span several batches (large
// transactions are journaled in chunks); readers treat entries from Index 0 to the one with Last
// set as one transaction.
type Tx struct {
	ID    string
	Index uint32 // position of this entry in the transaction, from 0
	Count uint32 // entries in the transaction, 0 if not known when written
	Last  bool   // this entry ends the transaction
}

// Column describes a column in a DDL entry.
type Column struct {
	Name string
	Type string // as the database spells it, e.g. "decimal(20,6) unsigned"
}

// Row is an ordered list of named values.
type Row []Field

// KeyHash identifies a primary key: SHA-256 over the key's column names and values in their
// canonical form (AppendCanonical: integers by value whatever their signedness, so that INT at
// one site and INT UNSIGNED at another agree). The applier keys its row clocks by it; the
// capture's snapshot finds them by it.
func (r Row) KeyHash() []byte {
	h := sha256.New()
	var buf []byte
	for _, f := range r {
		buf = String(f.Name).AppendCanonical(buf[:0])
		buf[0] = 'n' // the name's tag
		buf = f.Value.AppendCanonical(buf)
		h.Write(buf)
	}
	return h.Sum(nil)
}

// Field is one column value of a row.
type Field struct {
	Name  string
	Value Value
}

// Kind is the type of a Value. Values are part of the encoding: never renumber.
type Kind uint8

// Kinds of values. Exact representations: Decimal keeps the database's digits; Temporal keeps the
// database's text (DATE, DATETIME(6), TIMESTAMP(6), TIME, YEAR) so that no precision or range is
// lost to a Go type.
const (
	KindNull     Kind = 0
	KindInt      Kind = 1  // Int
	KindUint     Kind = 2  // Uint
	KindFloat32  Kind = 3  // Float (holds a float32 exactly)
	KindFloat64  Kind = 4  // Float
	KindDecimal  Kind = 5  // Str, e.g. "-123.4500"
	KindString   Kind = 6  // Str (UTF-8 text)
	KindBytes    Kind = 7  // Bytes
	KindBool     Kind = 8  // Uint 0 or 1
	KindTemporal Kind = 9  // Str
	KindJSON     Kind = 10 // Str
	kindMax      Kind = 10
)

// Value is a typed column value. Only the field that its Kind names is meaningful.
type Value struct {
	Kind  Kind
	Int   int64
	Uint  uint64
	Float float64
	Str   string
	Bytes []byte
}

// Constructors for the common kinds.
func Null() Value                 { return Value{Kind: KindNull} }
func Int(v int64) Value           { return Value{Kind: KindInt, Int: v} }
func Uint(v uint64) Value         { return Value{Kind: KindUint, Uint: v} }
func Float64(v float64) Value     { return Value{Kind: KindFloat64, Float: v} }
func String(v string) Value       { return Value{Kind: KindString, Str: v} }
func Bytes(v []byte) Value        { return Value{Kind: KindBytes, Bytes: v} }
func Decimal(digits string) Value { return Value{Kind: KindDecimal, Str: digits} }
func Bool(v bool) Value {
	if v {
		return Value{Kind: KindBool, Uint: 1}
	}
	return Value{Kind: KindBool}
}

// Map renders r as column -> value for JSON reports (conflicts, dead letters): values as SQLArg
// gives them, except bytes (text when they are valid UTF-8, else 0x-hex) and integers beyond
// 2^53 (decimal text, exact in any JSON reader). Nil for a nil row.
func (r Row) Map() map[string]any {
	if r == nil {
		return nil
	}
	m := make(map[string]any, len(r))
	for _, f := range r {
		v := f.Value.SQLArg()
		switch {
		case f.Value.Kind == KindBytes:
			if utf8.Valid(f.Value.Bytes) {
				v = string(f.Value.Bytes)
			} else {
				v = "0x" + hex.EncodeToString(f.Value.Bytes)
			}
		case f.Value.Kind == KindUint && f.Value.Uint > 1<<53:
			v = strconv.FormatUint(f.Value.Uint, 10)
		case f.Value.Kind == KindInt && (f.Value.Int > 1<<53 || f.Value.Int < -(1<<53)):
			v = strconv.FormatInt(f.Value.Int, 10)
		}
		m[f.Name] = v
	}
	return m
}

// SQLArg is v as the bound argument of a MariaDB statement that stores exactly that value:
// integers with their signedness, floats with their width, decimals, temporal values, JSON and
// text as the server's own text (converted by the server, without a float in between), bytes as
// bytes (empty, not NULL, when there are none), NULL as nil. The applier writes rows with it and
// the binlog snapshot binds primary keys with it.
func (v Value) SQLArg() any {
	switch v.Kind {
	case KindNull:
		return nil
	case KindInt:
		return v.Int
	case KindUint, KindBool:
		return v.Uint
	case KindFloat32:
		return float32(v.Float)
	case KindFloat64:
		return v.Float
	case KindBytes:
		if v.Bytes == nil {
			return []byte{}
		}
		return v.Bytes
	default: // decimal, string, temporal, json
		return v.Str
	}
}

// AppendCanonical appends a form of v that does not depend on how a site typed it, for hashing
// keys the same way at every site: a tag, the payload's length (8 bytes, big endian), the
// payload. Integers count by value whatever their signedness (tag 'u' for non-negative, 'i' for
// negative, decimal digits), booleans as unsigned integers, floats by their IEEE-754 bits ('f'),
// bytes as they are ('b'), null as '0', every other kind by its text ('s').
func (v Value) AppendCanonical(b []byte) []byte {
	put := func(tag byte, payload []byte) []byte {
		b = append(b, tag)
		b = binary.BigEndian.AppendUint64(b, uint64(len(payload)))
		return append(b, payload...)
	}
	switch v.Kind {
	case KindNull:
		return put('0', nil)
	case KindInt:
		if v.Int >= 0 {
			return put('u', strconv.AppendUint(nil, uint64(v.Int), 10))
		}
		return put('i', strconv.AppendInt(nil, v.Int, 10))
	case KindUint, KindBool:
		return put('u', strconv.AppendUint(nil, v.Uint, 10))
	case KindFloat32, KindFloat64:
		return put('f', binary.BigEndian.AppendUint64(nil, math.Float64bits(v.Float)))
	case KindBytes:
		return put('b', v.Bytes)
	default:
		return put('s', []byte(v.Str))
	}
}

// Equal reports whether two values are the same kind and value (NaN equals NaN bit for bit).
func (v Value) Equal(o Value) bool {
	if v.Kind != o.Kind {
		return false
	}
	switch v.Kind {
	case KindNull:
		return true
	case KindInt:
		return v.Int == o.Int
	case KindUint, KindBool:
		return v.Uint == o.Uint
	case KindFloat32, KindFloat64:
		return math.Float64bits(v.Float) == math.Float64bits(o.Float)
	case KindBytes:
		return string(v.Bytes) == string(o.Bytes)
	default:
		return v.Str == o.Str
	}
}
