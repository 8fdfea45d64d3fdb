package binlog

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/shopspring/decimal"

	"github.com/musicd/musicd/journal"
)

// tableSchema is what a TABLE_MAP event says about a table: everything rows are decoded with.
// It is derived from the event alone (binlog_row_metadata=FULL), never from the live schema, so a
// row written before an ALTER decodes with the columns it was written with.
type tableSchema struct {
	database, table string
	names           []string
	types           []byte   // real column types
	meta            []uint16 // type metadata (decimal precision and scale, ...)
	unsigned        []bool   // per column (a slice, not go-mysql's map: read for every value)
	collation       []uint64 // per column; 0 for a column without one
	enums, sets     map[int][]string
	pk              []int
	pkPrefix        bool   // the primary key is the first len(pk) columns, in order
	nameBytes       int    // the length of the column names together (for journal.RowSizeBound)
	fast            bool   // every column is of a type imageRow reads (fastType)
	version         uint64 // a hash of the above: changes when the table's shape changes
	sync            bool   // the table's policy mode is sync
}

// newTableSchema reads a TABLE_MAP event. It fails if the event lacks column names (the server
// does not write binlog_row_metadata=FULL).
func newTableSchema(t *replication.TableMapEvent) (*tableSchema, error) {
	names := t.ColumnNameString()
	if len(names) != int(t.ColumnCount) {
		return nil, fmt.Errorf("table %s.%s: TABLE_MAP event without column names (binlog_row_metadata is not FULL)", t.Schema, t.Table)
	}
	s := &tableSchema{
		database: string(t.Schema), table: string(t.Table), names: names,
		meta: t.ColumnMeta, unsigned: make([]bool, len(names)), collation: make([]uint64, len(names)),
		enums: t.EnumStrValueMap(), sets: t.SetStrValueMap(),
	}
	for i, u := range t.UnsignedMap() {
		if i >= 0 && i < len(names) {
			s.unsigned[i] = u
		}
	}
	for i, c := range t.CollationMap() {
		if i >= 0 && i < len(names) {
			s.collation[i] = c
		}
	}
	h := fnv.New64a()
	for i := range names {
		typ := t.ColumnType[i]
		if typ == mysql.MYSQL_TYPE_STRING && t.ColumnMeta[i] >= 256 {
			if rt := byte(t.ColumnMeta[i] >> 8); rt == mysql.MYSQL_TYPE_ENUM || rt == mysql.MYSQL_TYPE_SET {
				typ = rt
			}
		}
		s.types = append(s.types, typ)
		s.nameBytes += len(names[i])
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00%v\x00%d\x00%q\x00%q\x01", names[i], typ, t.ColumnMeta[i], s.unsigned[i], s.collation[i], s.enums[i], s.sets[i])
	}
	s.fast = true
	for i, typ := range s.types {
		s.fast = s.fast && fastType(typ, s.meta[i])
	}
	for _, i := range t.PrimaryKey {
		s.pk = append(s.pk, int(i))
	}
	s.pkPrefix = isPrefix(s.pk)
	fmt.Fprintf(h, "%v", s.pk)
	s.version = h.Sum64()
	return s, nil
}

// decodeRows is the syncer's RowsEventDecodeFunc. It decodes the event's header only and leaves
// the row images, as rowImages in e.Rows[0][0], to the capture's goroutine, which decodes only
// the events of captured tables: those of a table whose columns are all of common types
// (fastType) it decodes itself, straight into journal rows (tableSchema.imageRow); the others it
// has go-mysql decode (goMySQLRows). Decoding itself saves go-mysql's row of interfaces, a boxed
// value per column, and a conversion of each: about a third of the capture's CPU per row went to
// decoding and converting (docs/decisions/0013-row-decoding.md).
func decodeRows(e *replication.RowsEvent, data []byte) error {
	pos, err := e.DecodeHeader(data)
	if err != nil {
		return err
	}
	e.Rows = [][]any{{rowImages{data: data, pos: pos}}}
	return nil
}

// rowImages are a rows event's row images as the server wrote them, from data[pos:]: a slice of
// the buffer go-mysql read the event into, as go-mysql's own events keep (ColumnBitmap1, decoded
// strings). go-mysql (v1.16.0) reads every packet into a buffer of its own.
type rowImages struct {
	data []byte
	pos  int
}

// deferredImages returns the row images decodeRows left in e.
func deferredImages(e *replication.RowsEvent) (rowImages, bool) {
	if len(e.Rows) != 1 || len(e.Rows[0]) != 1 {
		return rowImages{}, false
	}
	imgs, ok := e.Rows[0][0].(rowImages)
	return imgs, ok
}

// goMySQLRows has go-mysql decode the row images decodeRows left in e, into e.Rows, without the
// signedness of integer columns. go-mysql rebuilds a map of the columns' signedness from the
// TABLE_MAP event for every row image it decodes (about 7% of the capture's CPU, measured);
// without the signedness it decodes integers as signed, and value reads them back as unsigned
// where tableSchema says so. Only integer decoding depends on signedness. go-mysql decodes row
// images with the table map's column types and metadata alone, so it is given a table map of
// just those, copied field by field (a copy of the whole struct would read the caches that the
// table map's accessors fill). TestCaptureTypesExactly holds every type to its exact value,
// unsigned extremes included.
func goMySQLRows(e *replication.RowsEvent, imgs rowImages) error {
	t := e.Table
	if t != nil && len(t.SignednessBitmap) > 0 {
		e.Table = &replication.TableMapEvent{
			TableID: t.TableID, Schema: t.Schema, Table: t.Table, // for go-mysql's error messages
			ColumnCount: t.ColumnCount, ColumnType: t.ColumnType, ColumnMeta: t.ColumnMeta,
		}
		defer func() { e.Table = t }()
	}
	e.Rows = nil
	return e.DecodeData(imgs.pos, imgs.data)
}

// fastType reports whether imageRow reads columns of real type typ with metadata meta:
// integers, FLOAT, DOUBLE, CHAR, VARCHAR, BINARY, VARBINARY, TEXT and BLOB.
func fastType(typ byte, meta uint16) bool {
	switch typ {
	case mysql.MYSQL_TYPE_TINY, mysql.MYSQL_TYPE_SHORT, mysql.MYSQL_TYPE_INT24, mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_LONGLONG,
		mysql.MYSQL_TYPE_FLOAT, mysql.MYSQL_TYPE_DOUBLE, mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_VAR_STRING, mysql.MYSQL_TYPE_STRING:
		return true
	case mysql.MYSQL_TYPE_BLOB:
		return meta >= 1 && meta <= 4
	}
	return false
}

// fullBitmap reports whether bitmap has the bits of all n columns set (a full row image).
func fullBitmap(bitmap []byte, n int) bool {
	if len(bitmap) < (n+7)/8 {
		return false
	}
	for i := range n {
		if bitmap[i>>3]&(1<<(i&7)) == 0 {
			return false
		}
	}
	return true
}

// errTruncated is a row image that ends before its columns do.
var errTruncated = errors.New("row image truncated")

// imageRow decodes the full row image at the start of data (every column present: the capture
// checks the event's bitmaps), for a table whose columns are all fastType, into a journal row
// and, if withKey, its primary key (as rowKey). It returns the bytes it read, and a bound of the
// row's encoding in an entry (journal.RowSizeBound), which bounds the key's too.
func (s *tableSchema) imageRow(data []byte, withKey bool, fields *fieldSlab) (r, key journal.Row, n, bound int, err error) {
	nulls := (len(s.names) + 7) / 8
	if len(data) < nulls {
		return nil, nil, 0, 0, fmt.Errorf("table %s.%s: %w", s.database, s.table, errTruncated)
	}
	r, rest := s.newRow(withKey, fields)
	pos, values := nulls, 0
	for i := range r {
		f := &r[i]
		f.Name = s.names[i]
		if data[i>>3]&(1<<(i&7)) != 0 {
			continue // the zero Value is NULL
		}
		n, err := s.decodeValue(i, data[pos:], &f.Value)
		if err != nil {
			return nil, nil, 0, 0, fmt.Errorf("table %s.%s column %s: %w", s.database, s.table, s.names[i], err)
		}
		pos += n
		values += len(f.Value.Str) + len(f.Value.Bytes)
	}
	return r, s.keyOf(r, rest, withKey), pos, journal.RowSizeBound(len(r), s.nameBytes, values), nil
}

// decodeValue decodes the value of column i (of a fastType) at the start of b into v, exactly as
// value converts go-mysql's decoding of it, and returns its length in the image.
func (s *tableSchema) decodeValue(i int, b []byte, v *journal.Value) (int, error) {
	typ := s.types[i]
	var n int
	switch typ {
	case mysql.MYSQL_TYPE_TINY:
		n = 1
	case mysql.MYSQL_TYPE_SHORT:
		n = 2
	case mysql.MYSQL_TYPE_INT24:
		n = 3
	case mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_FLOAT:
		n = 4
	case mysql.MYSQL_TYPE_LONGLONG, mysql.MYSQL_TYPE_DOUBLE:
		n = 8
	default:
		return s.decodeText(i, b, v)
	}
	if len(b) < n {
		return 0, errTruncated
	}
	switch typ {
	case mysql.MYSQL_TYPE_FLOAT:
		*v = journal.Value{Kind: journal.KindFloat32, Float: float64(mysql.ParseBinaryFloat32(b))}
	case mysql.MYSQL_TYPE_DOUBLE:
		*v = journal.Float64(mysql.ParseBinaryFloat64(b))
	default:
		u := mysql.FixedLengthInt(b[:n]) // little-endian
		if s.unsigned[i] {
			*v = journal.Uint(u)
		} else {
			shift := 64 - 8*n
			*v = journal.Int(int64(u<<shift) >> shift) // sign-extended from its width
		}
	}
	return n, nil
}

// decodeText decodes a CHAR, VARCHAR, BINARY, VARBINARY, TEXT or BLOB value: a length of 1 to 4
// bytes (by the type and its metadata), then the bytes, converted by the column's collation.
func (s *tableSchema) decodeText(i int, b []byte, v *journal.Value) (int, error) {
	var lenBytes int
	switch s.types[i] {
	case mysql.MYSQL_TYPE_BLOB:
		lenBytes = int(s.meta[i])
	case mysql.MYSQL_TYPE_STRING:
		lenBytes = 1
		if fixedLength(s.meta[i]) >= 256 {
			lenBytes = 2
		}
	default: // VARCHAR: the metadata is the maximum length in bytes
		lenBytes = 1
		if s.meta[i] >= 256 {
			lenBytes = 2
		}
	}
	if len(b) < lenBytes {
		return 0, errTruncated
	}
	length := int(mysql.FixedLengthInt(b[:lenBytes]))
	if len(b)-lenBytes < length {
		return 0, errTruncated
	}
	*v = text(b[lenBytes:lenBytes+length], s.collation[i])
	if s.types[i] == mysql.MYSQL_TYPE_STRING {
		binaryPadding(v, s.meta[i])
	}
	return lenBytes + length, nil
}

// binaryPadding gives a BINARY(n) value back the trailing zero bytes that the row image leaves
// out.
func binaryPadding(v *journal.Value, meta uint16) {
	if n := fixedLength(meta); v.Kind == journal.KindBytes && len(v.Bytes) < n {
		v.Bytes = append(v.Bytes, make([]byte, n-len(v.Bytes))...)
	}
}

// rowKey converts a decoded binlog row into a journal row, column by column, and if withKey also
// returns its primary key columns (nil if the table has none). Row and key are carved from
// fields; each is capped to its length, so appending to one never overwrites another. A key made
// of the row's first columns, in order, is the start of the row itself (rows are not changed once
// made).
func (s *tableSchema) rowKey(values []any, withKey bool, fields *fieldSlab) (journal.Row, journal.Row, error) {
	if len(values) != len(s.names) {
		return nil, nil, fmt.Errorf("table %s.%s: row of %d values for %d columns", s.database, s.table, len(values), len(s.names))
	}
	r, rest := s.newRow(withKey, fields)
	for i, v := range values {
		f := &r[i]
		f.Name = s.names[i]
		var err error
		if f.Value, err = s.value(i, v); err != nil {
			return nil, nil, fmt.Errorf("table %s.%s column %s: %w", s.database, s.table, s.names[i], err)
		}
	}
	return r, s.keyOf(r, rest, withKey), nil
}

// newRow takes a row of the table's columns from fields and, if withKey and the key is not the
// start of the row, room for the key after it (rest, empty with that capacity).
func (s *tableSchema) newRow(withKey bool, fields *fieldSlab) (r, rest journal.Row) {
	n := len(s.names)
	if withKey && !s.pkPrefix {
		n += len(s.pk)
	}
	all := fields.take(n)
	return all[:len(s.names):len(s.names)], all[len(s.names):len(s.names)]
}

// keyOf is the primary key of row r (nil without withKey or a key), made in rest (newRow).
func (s *tableSchema) keyOf(r, rest journal.Row, withKey bool) journal.Row {
	nk := len(s.pk)
	if !withKey || nk == 0 {
		return nil
	}
	if s.pkPrefix {
		return r[:nk:nk]
	}
	for _, i := range s.pk {
		if i < len(r) {
			rest = append(rest, r[i])
		}
	}
	return rest
}

// isPrefix reports whether columns are 0, 1, ... in order.
func isPrefix(columns []int) bool {
	for j, i := range columns {
		if i != j {
			return false
		}
	}
	return true
}

// fieldSlab hands out the fields of rows from shared blocks: one allocation for many rows rather
// than one per row. A block stays in memory while any of its rows does; rows are dropped group by
// group once journaled, so that is at most a block or so beyond the rows in flight.
type fieldSlab struct{ free journal.Row }

const fieldSlabSize = 1024

// take returns a zeroed row of n fields, with capacity n.
func (f *fieldSlab) take(n int) journal.Row {
	if cap(f.free)-len(f.free) < n {
		f.free = make(journal.Row, 0, max(n, fieldSlabSize))
	}
	start := len(f.free)
	f.free = f.free[:start+n]
	return f.free[start : start+n : start+n]
}

// value converts one value as go-mysql decoded it (with UseDecimal, without ParseTime) into an
// exact journal value.
func (s *tableSchema) value(i int, v any) (journal.Value, error) {
	if v == nil {
		return journal.Null(), nil
	}
	switch s.types[i] {
	case mysql.MYSQL_TYPE_TINY, mysql.MYSQL_TYPE_SHORT, mysql.MYSQL_TYPE_INT24, mysql.MYSQL_TYPE_LONG, mysql.MYSQL_TYPE_LONGLONG:
		// decodeRows has go-mysql decode every integer as signed: an unsigned column's value is
		// its bits read back as unsigned, of the column's width (INT24 comes sign-extended).
		unsigned := s.unsigned[i]
		switch n := v.(type) {
		case int8:
			if unsigned {
				return journal.Uint(uint64(uint8(n))), nil
			}
			return journal.Int(int64(n)), nil
		case int16:
			if unsigned {
				return journal.Uint(uint64(uint16(n))), nil
			}
			return journal.Int(int64(n)), nil
		case int32:
			if unsigned {
				u := uint32(n)
				if s.types[i] == mysql.MYSQL_TYPE_INT24 {
					u &= 0xFFFFFF
				}
				return journal.Uint(uint64(u)), nil
			}
			return journal.Int(int64(n)), nil
		case int64:
			if unsigned {
				return journal.Uint(uint64(n)), nil
			}
			return journal.Int(n), nil
		case uint8:
			return journal.Uint(uint64(n)), nil
		case uint16:
			return journal.Uint(uint64(n)), nil
		case uint32:
			return journal.Uint(uint64(n)), nil
		case uint64:
			return journal.Uint(n), nil
		}
	case mysql.MYSQL_TYPE_NEWDECIMAL:
		if d, ok := v.(decimal.Decimal); ok {
			return journal.Decimal(d.StringFixed(int32(s.meta[i] & 0xff))), nil
		}
	case mysql.MYSQL_TYPE_FLOAT:
		if f, ok := v.(float32); ok {
			return journal.Value{Kind: journal.KindFloat32, Float: float64(f)}, nil
		}
	case mysql.MYSQL_TYPE_DOUBLE:
		if f, ok := v.(float64); ok {
			return journal.Float64(f), nil
		}
	case mysql.MYSQL_TYPE_BIT:
		if n, ok := v.(int64); ok {
			return journal.Uint(uint64(n)), nil
		}
	case mysql.MYSQL_TYPE_YEAR:
		if n, ok := v.(int); ok {
			return journal.Value{Kind: journal.KindTemporal, Str: fmt.Sprintf("%04d", n)}, nil
		}
	case mysql.MYSQL_TYPE_DATE, mysql.MYSQL_TYPE_NEWDATE, mysql.MYSQL_TYPE_TIME, mysql.MYSQL_TYPE_DATETIME, mysql.MYSQL_TYPE_TIMESTAMP:
		if str, ok := v.(string); ok {
			return journal.Value{Kind: journal.KindTemporal, Str: str}, nil
		}
	case mysql.MYSQL_TYPE_TIME2, mysql.MYSQL_TYPE_DATETIME2, mysql.MYSQL_TYPE_TIMESTAMP2:
		// Text as the server shows it (TIMESTAMP in UTC), with exactly the column's fractional
		// digits (its metadata), which go-mysql drops when they are all zero.
		if str, ok := v.(string); ok {
			return journal.Value{Kind: journal.KindTemporal, Str: withFraction(str, int(s.meta[i]))}, nil
		}
	case mysql.MYSQL_TYPE_ENUM:
		if n, ok := v.(int64); ok {
			if n == 0 {
				return journal.String(""), nil // the "invalid value" index
			}
			names := s.enums[i]
			if int(n) > len(names) {
				return journal.Value{}, fmt.Errorf("enum index %d of %d values", n, len(names))
			}
			return journal.String(names[n-1]), nil
		}
	case mysql.MYSQL_TYPE_SET:
		if n, ok := v.(int64); ok {
			names := s.sets[i]
			var parts []string
			for b := range names {
				if uint64(n)&(1<<b) != 0 {
					parts = append(parts, names[b])
				}
			}
			return journal.String(strings.Join(parts, ",")), nil
		}
	case mysql.MYSQL_TYPE_JSON:
		switch j := v.(type) {
		case string:
			return journal.Value{Kind: journal.KindJSON, Str: j}, nil
		case []byte:
			return journal.Value{Kind: journal.KindJSON, Str: string(j)}, nil
		}
	case mysql.MYSQL_TYPE_GEOMETRY:
		if b, ok := v.([]byte); ok {
			return journal.Bytes(append([]byte{}, b...)), nil
		}
	case mysql.MYSQL_TYPE_STRING, mysql.MYSQL_TYPE_VARCHAR, mysql.MYSQL_TYPE_VAR_STRING, mysql.MYSQL_TYPE_BLOB:
		var val journal.Value
		switch b := v.(type) {
		case string:
			val = textString(b, s.collation[i])
		case []byte:
			val = text(b, s.collation[i])
		default:
			return journal.Value{}, fmt.Errorf("unexpected %T", v)
		}
		if s.types[i] == mysql.MYSQL_TYPE_STRING {
			binaryPadding(&val, s.meta[i])
		}
		return val, nil
	}
	return journal.Value{}, fmt.Errorf("unexpected %T for column type %d", v, s.types[i])
}

// text decodes character data by its collation: binary stays bytes, latin1 is converted to UTF-8
// (MariaDB's latin1 is Windows-1252), and other character sets are kept as UTF-8 text when they
// are valid UTF-8 (utf8mb3, utf8mb4, ascii), or as bytes otherwise. raw may share go-mysql's
// buffer: the value is a copy (one copy of the data, whatever the case).
func text(raw []byte, collation uint64) journal.Value {
	switch {
	case collation == binaryCollation:
		return journal.Bytes(append([]byte{}, raw...))
	case isLatin1(collation):
		ascii := asciiPrefix(raw)
		if ascii == len(raw) {
			return journal.String(string(raw)) // ASCII is the same in latin1 and UTF-8
		}
		var b strings.Builder
		b.Grow(len(raw) + 2*(len(raw)-ascii))
		b.Write(raw[:ascii])
		for _, c := range raw[ascii:] {
			b.WriteRune(cp1252(c))
		}
		return journal.String(b.String())
	case utf8.Valid(raw):
		return journal.String(string(raw))
	default:
		return journal.Bytes(append([]byte{}, raw...))
	}
}

// textString is text of a string (CHAR and VARCHAR columns: go-mysql decodes them as strings that
// may share its buffer), with the same result as text([]byte(raw), collation).
func textString(raw string, collation uint64) journal.Value {
	switch {
	case collation == binaryCollation:
		return journal.Bytes([]byte(raw))
	case isLatin1(collation):
		ascii := asciiPrefix(raw)
		if ascii == len(raw) {
			return journal.String(strings.Clone(raw))
		}
		var b strings.Builder
		b.Grow(len(raw) + 2*(len(raw)-ascii))
		b.WriteString(raw[:ascii])
		for i := ascii; i < len(raw); i++ {
			b.WriteRune(cp1252(raw[i]))
		}
		return journal.String(b.String())
	case utf8.ValidString(raw):
		return journal.String(strings.Clone(raw))
	default:
		return journal.Bytes([]byte(raw))
	}
}

// asciiPrefix is the length of the ASCII prefix of s.
func asciiPrefix[T string | []byte](s T) int {
	i := 0
	for i < len(s) && s[i] < utf8.RuneSelf {
		i++
	}
	return i
}

const binaryCollation = 63

// isLatin1 reports whether collation is one of MariaDB's latin1 character set.
func isLatin1(collation uint64) bool {
	switch collation {
	case 5, 8, 15, 31, 47, 48, 49, 94, 1032, 1071:
		return true
	}
	return false
}

// cp1252 maps a latin1 (Windows-1252) byte to its rune. Bytes 0x80-0x9f that Windows-1252 leaves
// undefined map to the C1 control of the same value, as MariaDB does.
func cp1252(c byte) rune {
	if c < 0x80 || c >= 0xa0 {
		return rune(c)
	}
	return cp1252High[c-0x80]
}

var cp1252High = [32]rune{
	0x20ac, 0x81, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8d, 0x017d, 0x8f,
	0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x9d, 0x017e, 0x0178,
}

// withFraction gives a temporal text exactly fsp fractional digits.
func withFraction(s string, fsp int) string {
	if fsp <= 0 || fsp > 6 {
		return s
	}
	dot := strings.LastIndexByte(s, '.')
	if dot < 0 {
		return s + "." + strings.Repeat("0", fsp)
	}
	if have := len(s) - dot - 1; have < fsp {
		return s + strings.Repeat("0", fsp-have)
	}
	return s
}

// fixedLength is the declared byte length of a CHAR/BINARY column from its TABLE_MAP metadata
// (the same decoding as the server's: the high bits of the length are folded into the type byte).
func fixedLength(meta uint16) int {
	if meta < 256 {
		return int(meta)
	}
	b0, b1 := byte(meta>>8), byte(meta&0xff)
	if b0&0x30 != 0x30 {
		return int(uint16(b1) | uint16((b0&0x30)^0x30)<<4)
	}
	return int(b1)
}
