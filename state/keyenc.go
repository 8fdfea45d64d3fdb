package state

// Encodings and checks shared by the two backends (CassandraBackend, EmbeddedBackend):
//
//   - bkTable: a table definition validated once, with its columns indexed;
//   - bkNormalize: the canonical form of a column value (the form Cassandra gives back), so that
//     both stores keep, compare and return exactly the same values;
//   - bkCheckMutation, bkCheckQuery: validation of the Backend method inputs, before any CQL is
//     built or any byte is written;
//   - bkAppendKey: an order-preserving encoding of key values (the embedded store's row keys);
//   - bkAppendValue/bkReadValue: a compact self-describing encoding of values (embedded records,
//     query fingerprints);
//   - page tokens: opaque, checksummed, bound to the query that produced them.

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"math"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"gopkg.in/inf.v0"

	"github.com/musicd/musicd/journal"
)

// bkTable is a validated table definition with its columns indexed. Immutable once built.
type bkTable struct {
	Table
	// index of each column in Columns
	colIdx map[string]int
	// key columns in KeyColumns order; keyCol[i] is the index in Columns
	keyCol []int
	// regular columns in declared order; regCol[i] is the index in Columns; regIdx maps a
	// regular column name to its position in regCol
	regCol []int
	regIdx map[string]int
	npk    int // number of partition key columns (the first npk of keyCol)
}

func newBkTable(t Table) (*bkTable, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	bt := &bkTable{Table: cloneTable(t), colIdx: map[string]int{}, regIdx: map[string]int{}, npk: len(t.PartitionKey)}
	for i, c := range bt.Columns {
		bt.colIdx[c.Name] = i
	}
	for _, k := range bt.KeyColumns() {
		bt.keyCol = append(bt.keyCol, bt.colIdx[k])
	}
	for i, c := range bt.Columns {
		if !bt.IsKey(c.Name) {
			bt.regIdx[c.Name] = len(bt.regCol)
			bt.regCol = append(bt.regCol, i)
		}
	}
	return bt, nil
}

func (bt *bkTable) qualified() string { return bt.Keyspace + "." + bt.Name }

func cloneTable(t Table) Table {
	t.Columns = append([]Column(nil), t.Columns...)
	t.PartitionKey = append([]string(nil), t.PartitionKey...)
	if len(t.Clustering) > 0 {
		t.Clustering = append([]string(nil), t.Clustering...)
	} else {
		t.Clustering = nil
	}
	return t
}

// sameTable reports whether two definitions describe the same table (nil and empty clustering
// are the same).
func sameTable(a, b Table) bool {
	if a.Keyspace != b.Keyspace || a.Name != b.Name || len(a.Columns) != len(b.Columns) ||
		len(a.PartitionKey) != len(b.PartitionKey) || len(a.Clustering) != len(b.Clustering) {
		return false
	}
	for i := range a.Columns {
		if a.Columns[i] != b.Columns[i] {
			return false
		}
	}
	for i := range a.PartitionKey {
		if a.PartitionKey[i] != b.PartitionKey[i] {
			return false
		}
	}
	for i := range a.Clustering {
		if a.Clustering[i] != b.Clustering[i] {
			return false
		}
	}
	return true
}

// bkTableCache remembers validated definitions by qualified name, so that a table is validated
// again only when a caller passes a definition that differs from the last one seen.
type bkTableCache struct{ m sync.Map } // keyspace.table -> *bkTable

func (c *bkTableCache) get(t Table) (*bkTable, error) {
	name := t.Keyspace + "." + t.Name
	if v, ok := c.m.Load(name); ok {
		if bt := v.(*bkTable); sameTable(bt.Table, t) {
			return bt, nil
		}
	}
	bt, err := newBkTable(t)
	if err != nil {
		return nil, err
	}
	c.m.Store(name, bt)
	return bt, nil
}

func (c *bkTableCache) forget(keyspace, table string) { c.m.Delete(keyspace + "." + table) }

// bkNormalize checks that v is a value of column col and returns its canonical form: the form
// Cassandra returns it in (timestamps in UTC with milliseconds, UUIDs in lower case, decimals as
// inf.Dec renders them, floats rounded to 32 bits). Errors wrap ErrInvalid.
func bkNormalize(col Column, v journal.Value) (journal.Value, error) {
	if err := checkKind(col, v); err != nil {
		return v, err
	}
	if v.Kind == journal.KindNull {
		return journal.Null(), nil
	}
	bad := func(format string, a ...any) (journal.Value, error) {
		return v, fmt.Errorf("%w: column %s (%s): %s", ErrInvalid, col.Name, col.Type, fmt.Sprintf(format, a...))
	}
	if len(v.Str) > MaxValueBytes || len(v.Bytes) > MaxValueBytes {
		return bad("value longer than %d bytes", MaxValueBytes)
	}
	switch col.Type {
	case Text:
		if !utf8.ValidString(v.Str) {
			return bad("not valid UTF-8")
		}
		return journal.String(v.Str), nil
	case UUID:
		s := strings.ToLower(v.Str)
		if !uuidRE.MatchString(s) {
			return bad("%q is not a UUID", truncate(v.Str))
		}
		return journal.String(s), nil
	case Int:
		if v.Int < math.MinInt32 || v.Int > math.MaxInt32 {
			return bad("%d is outside the 32-bit range", v.Int)
		}
		return journal.Int(v.Int), nil
	case Bigint:
		return journal.Int(v.Int), nil
	case Double:
		return journal.Float64(v.Float), nil
	case Float:
		if !math.IsInf(v.Float, 0) && !math.IsNaN(v.Float) && math.Abs(v.Float) > math.MaxFloat32 {
			return bad("%g is outside the 32-bit float range", v.Float)
		}
		return journal.Value{Kind: journal.KindFloat32, Float: float64(float32(v.Float))}, nil
	case Boolean:
		return journal.Bool(v.Uint != 0), nil
	case Blob:
		b := v.Bytes
		if b == nil {
			b = []byte{} // empty, not null
		}
		return journal.Bytes(b), nil
	case Timestamp:
		t, err := time.Parse(time.RFC3339Nano, v.Str)
		if err != nil {
			return bad("%q is not an RFC 3339 time", truncate(v.Str))
		}
		return journal.Value{Kind: journal.KindTemporal, Str: FormatTimestamp(t)}, nil
	case Decimal:
		if !decimalRE.MatchString(v.Str) {
			return bad("%q is not a decimal number", truncate(v.Str))
		}
		d, ok := new(inf.Dec).SetString(v.Str)
		if !ok {
			return bad("%q is not a decimal number", truncate(v.Str))
		}
		return journal.Decimal(d.String()), nil
	}
	return bad("unknown type")
}

// timestampMillis converts a normalized timestamp value to milliseconds since the epoch.
func timestampMillis(v journal.Value) int64 {
	t, _ := time.Parse(time.RFC3339Nano, v.Str) // normalized: always parses
	return t.UnixMilli()
}

func valueSize(v journal.Value) int { return len(v.Str) + len(v.Bytes) + 8 }

// bkMutation is a validated, normalized mutation.
type bkMutation struct {
	op  MutationOp
	key []journal.Value // in KeyColumns order, never null
	// vals[i] is the value of regular column regCol[i] when set[i] (MutPut sets every column:
	// those not given are null)
	vals []journal.Value
	set  []bool
	ts   int64
}

func (bt *bkTable) checkMutation(m Mutation) (bkMutation, error) {
	where := "table " + bt.qualified()
	out := bkMutation{op: m.Op, ts: m.Timestamp}
	switch m.Op {
	case MutPut, MutUpdate, MutDelete:
	default:
		return out, fmt.Errorf("%w: %s: unknown mutation op %d", ErrInvalid, where, m.Op)
	}
	if m.Timestamp <= 0 {
		return out, fmt.Errorf("%w: %s: mutation timestamp %d is not positive", ErrInvalid, where, m.Timestamp)
	}
	key, err := bt.checkKey(m.Key)
	if err != nil {
		return out, err
	}
	out.key = key
	if m.Op == MutDelete {
		if len(m.Values) > 0 {
			return out, fmt.Errorf("%w: %s: a delete carries no values", ErrInvalid, where)
		}
		return out, nil
	}
	out.vals = make([]journal.Value, len(bt.regCol))
	out.set = make([]bool, len(bt.regCol))
	if m.Op == MutPut {
		for i := range out.set {
			out.set[i] = true
		}
	}
	given := make([]bool, len(bt.regCol))
	size := 0
	for _, f := range m.Values {
		i, ok := bt.regIdx[f.Name]
		if !ok {
			if _, known := bt.colIdx[f.Name]; known {
				return out, fmt.Errorf("%w: %s: column %s is part of the primary key, not a value", ErrInvalid, where, f.Name)
			}
			return out, fmt.Errorf("%w: %s has no column %q", ErrInvalid, where, f.Name)
		}
		if given[i] {
			return out, fmt.Errorf("%w: %s: column %s given twice", ErrInvalid, where, f.Name)
		}
		given[i] = true
		v, err := bkNormalize(bt.Columns[bt.regCol[i]], f.Value)
		if err != nil {
			return out, fmt.Errorf("%s: %w", where, err)
		}
		size += valueSize(v)
		out.vals[i], out.set[i] = v, true
	}
	if size > MaxRowBytes {
		return out, fmt.Errorf("%w: %s: row values of %d bytes (max %d)", ErrInvalid, where, size, MaxRowBytes)
	}
	return out, nil
}

// checkKey validates a primary key row (every key column exactly once, non-null, of its type,
// bounded) and returns its normalized values in KeyColumns order.
func (bt *bkTable) checkKey(key journal.Row) ([]journal.Value, error) {
	where := "table " + bt.qualified()
	out := make([]journal.Value, len(bt.keyCol))
	got := make([]bool, len(bt.keyCol))
	pos := map[string]int{}
	for i, ci := range bt.keyCol {
		pos[bt.Columns[ci].Name] = i
	}
	size := 0
	for _, f := range key {
		i, ok := pos[f.Name]
		if !ok {
			return nil, fmt.Errorf("%w: %s: %q is not a primary key column (key: %v)", ErrInvalid, where, f.Name, bt.KeyColumns())
		}
		if got[i] {
			return nil, fmt.Errorf("%w: %s: key column %s given twice", ErrInvalid, where, f.Name)
		}
		if f.Value.Kind == journal.KindNull {
			return nil, fmt.Errorf("%w: %s: key column %s is null", ErrInvalid, where, f.Name)
		}
		v, err := bkNormalize(bt.Columns[bt.keyCol[i]], f.Value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		got[i], out[i] = true, v
		size += valueSize(v)
	}
	for i, ok := range got {
		if !ok {
			return nil, fmt.Errorf("%w: %s: key lacks column %s", ErrInvalid, where, bt.Columns[bt.keyCol[i]].Name)
		}
	}
	if size > MaxKeyBytes {
		return nil, fmt.Errorf("%w: %s: primary key of %d bytes (max %d)", ErrInvalid, where, size, MaxKeyBytes)
	}
	return out, nil
}

// bkFilter is a validated filter: the column's index in Columns and the normalized value.
type bkFilter struct {
	col int
	v   journal.Value
}

// bkQuery is a validated query.
type bkQuery struct {
	limit   int
	bound   int // rows examined at most by one call
	filters []bkFilter
	// keyEq[i] is the index in filters of a non-null equality on key column i, or -1
	keyEq []int
}

func (bt *bkTable) checkQuery(q Query) (bkQuery, error) {
	where := "table " + bt.qualified()
	out := bkQuery{limit: q.Limit}
	switch {
	case q.Limit == 0:
		out.limit = DefaultPageRows
	case q.Limit < 0 || q.Limit > MaxPageRows:
		return out, fmt.Errorf("%w: %s: limit %d outside 1-%d", ErrInvalid, where, q.Limit, MaxPageRows)
	}
	out.bound = max(10*out.limit, 1000)
	if len(q.Filters) > MaxColumns {
		return out, fmt.Errorf("%w: %s: %d filters (max %d)", ErrInvalid, where, len(q.Filters), MaxColumns)
	}
	if len(q.Page) > maxTokenLen {
		return out, fmt.Errorf("%w: %s: page token too long", ErrInvalid, where)
	}
	out.keyEq = make([]int, len(bt.keyCol))
	for i := range out.keyEq {
		out.keyEq[i] = -1
	}
	for _, f := range q.Filters {
		ci, ok := bt.colIdx[f.Column]
		if !ok {
			return out, fmt.Errorf("%w: %s has no column %q to filter on", ErrInvalid, where, f.Column)
		}
		v, err := bkNormalize(bt.Columns[ci], f.Value)
		if err != nil {
			return out, fmt.Errorf("%s: filter: %w", where, err)
		}
		out.filters = append(out.filters, bkFilter{col: ci, v: v})
		for k, kc := range bt.keyCol {
			if kc == ci && v.Kind != journal.KindNull && out.keyEq[k] < 0 {
				out.keyEq[k] = len(out.filters) - 1
			}
		}
	}
	return out, nil
}

// partitionPrefix returns how many key columns (in KeyColumns order) the filters fix by equality
// when they fix the whole partition key: the partition key columns plus the longest prefix of
// clustering columns. 0 means a scan of the whole table.
func (bt *bkTable) partitionPrefix(q bkQuery) int {
	n := 0
	for n < len(bt.keyCol) && q.keyEq[n] >= 0 {
		n++
	}
	if n < bt.npk {
		return 0
	}
	return n
}

// matches reports whether a row (every column, in declared order) passes every filter.
func (q bkQuery) matches(values journal.Row) bool {
	for _, f := range q.filters {
		if CompareValues(values[f.col].Value, f.v) != 0 {
			return false
		}
	}
	return true
}

// fingerprint identifies the query a page token belongs to: the backend kind, the table and the
// filters (not the limit, which may change from page to page).
func (bt *bkTable) fingerprint(kind byte, q bkQuery) uint32 {
	h := fnv.New32a()
	b := []byte{kind}
	b = append(b, bt.Keyspace...)
	b = append(b, 0)
	b = append(b, bt.Name...)
	b = append(b, 0)
	for _, f := range q.filters {
		b = binary.AppendUvarint(b, uint64(f.col))
		b = bkAppendValue(b, f.v)
	}
	h.Write(b)
	return h.Sum32()
}

// Page tokens: base64url(version, fingerprint (4 bytes), payload, CRC-32 (4 bytes)).
const (
	tokenVersion = 1
	maxTokenLen  = 16 << 10
)

func bkEncodeToken(fp uint32, payload []byte) string {
	b := []byte{tokenVersion}
	b = binary.BigEndian.AppendUint32(b, fp)
	b = append(b, payload...)
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	return base64.RawURLEncoding.EncodeToString(b)
}

var errBadToken = errors.New("malformed page token")

// bkDecodeToken returns the payload of a token made by bkEncodeToken for the query with
// fingerprint fp.
func bkDecodeToken(s string, fp uint32) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 9 || b[0] != tokenVersion {
		return nil, errBadToken
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return nil, errBadToken
	}
	if binary.BigEndian.Uint32(body[1:5]) != fp {
		return nil, fmt.Errorf("%w (it belongs to another query)", errBadToken)
	}
	return body[5:], nil
}

// bkAppendKey appends the order-preserving encoding of the normalized non-null value v of a key
// column of type typ. Each encoding delimits itself, so concatenated encodings of the key
// columns order rows by their values column after column in CompareValues order:
//
//	int, bigint       8 bytes big-endian, sign bit flipped
//	float, double     IEEE 754 bits of the float64, sign bit flipped (all bits if negative)
//	boolean           1 byte
//	text, uuid, blob, timestamp
//	                  the bytes with 0x00 escaped as 0x00 0xFF, then 0x00 0x01
//	decimal           sign class (negative 0x01, zero 0x02, positive 0x03), then for non-zero
//	                  values the exponent E (8 bytes, sign flipped) and the significant digits
//	                  d1..dn of 0.d1..dn x 10^E, then 0x00; all bytes after the class are
//	                  complemented for negative values. Decimals equal in value (1.5, 1.50)
//	                  encode the same.
func bkAppendKey(b []byte, typ Type, v journal.Value) []byte {
	switch typ {
	case Int, Bigint:
		return binary.BigEndian.AppendUint64(b, uint64(v.Int)^(1<<63))
	case Float, Double:
		u := math.Float64bits(v.Float)
		if u&(1<<63) != 0 {
			u = ^u
		} else {
			u |= 1 << 63
		}
		return binary.BigEndian.AppendUint64(b, u)
	case Boolean:
		return append(b, byte(v.Uint&1))
	case Blob:
		return appendEscaped(b, v.Bytes)
	case Decimal:
		return appendDecimalKey(b, v.Str)
	}
	return appendEscaped(b, []byte(v.Str))
}

func appendEscaped(b, s []byte) []byte {
	for {
		i := bytes.IndexByte(s, 0)
		if i < 0 {
			break
		}
		b = append(b, s[:i]...)
		b = append(b, 0, 0xFF)
		s = s[i+1:]
	}
	b = append(b, s...)
	return append(b, 0, 1)
}

func appendDecimalKey(b []byte, s string) []byte {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	intPart, frac, _ := strings.Cut(s, ".")
	intPart = strings.TrimLeft(intPart, "0")
	var digits string
	var exp int64
	if intPart != "" {
		digits, exp = intPart+frac, int64(len(intPart))
	} else {
		trimmed := strings.TrimLeft(frac, "0")
		digits, exp = trimmed, -int64(len(frac)-len(trimmed))
	}
	digits = strings.TrimRight(digits, "0")
	if digits == "" {
		return append(b, 0x02)
	}
	class := byte(0x03)
	if neg {
		class = 0x01
	}
	start := len(b) + 1
	b = append(b, class)
	b = binary.BigEndian.AppendUint64(b, uint64(exp)^(1<<63))
	b = append(b, digits...)
	b = append(b, 0)
	if neg {
		for i := start; i < len(b); i++ {
			b[i] = ^b[i]
		}
	}
	return b
}

// bkAppendKeyValues appends the encodings of the first n key values.
func (bt *bkTable) appendKeyValues(b []byte, key []journal.Value, n int) []byte {
	for i := 0; i < n; i++ {
		b = bkAppendKey(b, bt.Columns[bt.keyCol[i]].Type, key[i])
	}
	return b
}

// bkAppendValue appends a self-describing encoding of v: its kind, then the payload.
func bkAppendValue(b []byte, v journal.Value) []byte {
	b = append(b, byte(v.Kind))
	switch v.Kind {
	case journal.KindNull:
	case journal.KindInt:
		b = binary.BigEndian.AppendUint64(b, uint64(v.Int))
	case journal.KindUint, journal.KindBool:
		b = binary.BigEndian.AppendUint64(b, v.Uint)
	case journal.KindFloat32, journal.KindFloat64:
		b = binary.BigEndian.AppendUint64(b, math.Float64bits(v.Float))
	case journal.KindBytes:
		b = binary.AppendUvarint(b, uint64(len(v.Bytes)))
		b = append(b, v.Bytes...)
	default: // the string kinds
		b = binary.AppendUvarint(b, uint64(len(v.Str)))
		b = append(b, v.Str...)
	}
	return b
}

var errCorruptValue = errors.New("corrupt value encoding")

// bkReadValue decodes a value encoded by bkAppendValue and returns the rest of b.
func bkReadValue(b []byte) (journal.Value, []byte, error) {
	if len(b) == 0 {
		return journal.Value{}, nil, errCorruptValue
	}
	v := journal.Value{Kind: journal.Kind(b[0])}
	b = b[1:]
	fixed := func() (uint64, error) {
		if len(b) < 8 {
			return 0, errCorruptValue
		}
		u := binary.BigEndian.Uint64(b)
		b = b[8:]
		return u, nil
	}
	varlen := func() ([]byte, error) {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > uint64(len(b)-w) {
			return nil, errCorruptValue
		}
		s := b[w : w+int(n)]
		b = b[w+int(n):]
		return s, nil
	}
	var err error
	var u uint64
	switch v.Kind {
	case journal.KindNull:
	case journal.KindInt:
		u, err = fixed()
		v.Int = int64(u)
	case journal.KindUint, journal.KindBool:
		v.Uint, err = fixed()
	case journal.KindFloat32, journal.KindFloat64:
		u, err = fixed()
		v.Float = math.Float64frombits(u)
	case journal.KindBytes:
		var s []byte
		s, err = varlen()
		v.Bytes = bytes.Clone(s)
		if v.Bytes == nil {
			v.Bytes = []byte{}
		}
	case journal.KindDecimal, journal.KindString, journal.KindTemporal, journal.KindJSON:
		var s []byte
		s, err = varlen()
		v.Str = string(s)
	default:
		err = errCorruptValue
	}
	return v, b, err
}

// appendKeyRecord appends the self-describing encodings (bkAppendValue) of a row's primary key
// values, in KeyColumns order: the position in a Cassandra page token.
func (bt *bkTable) appendKeyRecord(b []byte, key []journal.Value) []byte {
	for _, v := range key {
		b = bkAppendValue(b, v)
	}
	return b
}

// readKeyRecord decodes what appendKeyRecord wrote: exactly one non-null value of each key
// column's type, returned normalized. errBadToken otherwise.
func (bt *bkTable) readKeyRecord(b []byte) ([]journal.Value, error) {
	out := make([]journal.Value, len(bt.keyCol))
	for i, ci := range bt.keyCol {
		v, rest, err := bkReadValue(b)
		if err != nil || v.Kind == journal.KindNull {
			return nil, errBadToken
		}
		if out[i], err = bkNormalize(bt.Columns[ci], v); err != nil {
			return nil, errBadToken
		}
		b = rest
	}
	if len(b) != 0 {
		return nil, errBadToken
	}
	return out, nil
}
