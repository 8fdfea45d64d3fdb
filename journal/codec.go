package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// The encoding of an entry is one version byte followed by a protocol buffer message (field
// numbers below; the schema is documented in docs/journal.md). Protocol buffers give a compact,
// self-delimiting and forward-compatible form: a reader skips fields it does not know, so new
// fields can be added without a new version. The version byte changes only for an incompatible
// change. See docs/decisions/0003-journal.md.
const encodingVersion = 1

// Field numbers of the Entry message. Never reuse a number.
const (
	fStream        = 1
	fSeq           = 2
	fEpoch         = 3
	fHLCWall       = 4
	fHLCLogical    = 5
	fOrigin        = 6
	fGTID          = 7
	fFile          = 8
	fPos           = 9
	fRequestID     = 10
	fTxID          = 11
	fTxIndex       = 12
	fTxCount       = 13
	fTxLast        = 14
	fOp            = 15
	fDatabase      = 16
	fTable         = 17
	fKey           = 18
	fBefore        = 19
	fAfter         = 20
	fSchemaVersion = 21
	fStatement     = 22
	fColumn        = 23
	fPosition      = 24
)

// Field numbers of the Row (1: repeated Field), Field and Column messages.
const (
	fRowField   = 1
	fFieldName  = 1
	fFieldKind  = 2
	fFieldInt   = 3
	fFieldUint  = 4
	fFieldFloat = 5
	fFieldStr   = 6
	fFieldBytes = 7
	fColName    = 1
	fColType    = 2
)

// ErrCorrupt is returned (wrapped) by DecodeEntry for bytes that are not an encoded entry.
var ErrCorrupt = errors.New("journal: corrupt entry encoding")

// AppendEncoded appends the encoding of e to b. It writes nested messages in place (a row's or a
// field's length is set once it is written, moving it up when the length takes more than a byte),
// so it allocates nothing when b has room: capture encodes every row it journals.
func AppendEncoded(b []byte, e *Entry) []byte {
	b = append(b, encodingVersion)
	b = appendString(b, fStream, e.Stream)
	b = appendUint(b, fSeq, e.Seq)
	b = appendUint(b, fEpoch, e.Epoch)
	b = appendUint(b, fHLCWall, uint64(e.HLC.Wall))
	b = appendUint(b, fHLCLogical, uint64(e.HLC.Logical))
	b = appendString(b, fOrigin, e.Origin)
	b = appendString(b, fGTID, e.Source.GTID)
	b = appendString(b, fFile, e.Source.File)
	b = appendUint(b, fPos, e.Source.Pos)
	b = appendString(b, fRequestID, e.Source.RequestID)
	b = appendString(b, fPosition, e.Source.Position)
	b = appendString(b, fTxID, e.Tx.ID)
	b = appendUint(b, fTxIndex, uint64(e.Tx.Index))
	b = appendUint(b, fTxCount, uint64(e.Tx.Count))
	if e.Tx.Last {
		b = appendUint(b, fTxLast, 1)
	}
	b = appendUint(b, fOp, uint64(e.Op))
	b = appendString(b, fDatabase, e.Database)
	b = appendString(b, fTable, e.Table)
	b = appendRow(b, fKey, e.Key)
	b = appendRow(b, fBefore, e.Before)
	b = appendRow(b, fAfter, e.After)
	b = appendUint(b, fSchemaVersion, e.SchemaVersion)
	b = appendString(b, fStatement, e.Statement)
	for _, c := range e.Columns {
		b = appendVarint(b, protowire.EncodeTag(fColumn, protowire.BytesType))
		b = appendVarint(b, uint64(sizeString(fColName, c.Name)+sizeString(fColType, c.Type)))
		b = appendString(b, fColName, c.Name)
		b = appendString(b, fColType, c.Type)
	}
	return b
}

// Encode returns the encoding of e.
func Encode(e *Entry) []byte { return AppendEncoded(make([]byte, 0, EncodedSize(e)), e) }

// EncodedSize is the length of the encoding of e.
func EncodedSize(e *Entry) int {
	n := 1 // version
	n += sizeString(fStream, e.Stream)
	n += sizeUint(fSeq, e.Seq)
	n += sizeUint(fEpoch, e.Epoch)
	n += sizeUint(fHLCWall, uint64(e.HLC.Wall))
	n += sizeUint(fHLCLogical, uint64(e.HLC.Logical))
	n += sizeString(fOrigin, e.Origin)
	n += sizeString(fGTID, e.Source.GTID)
	n += sizeString(fFile, e.Source.File)
	n += sizeUint(fPos, e.Source.Pos)
	n += sizeString(fRequestID, e.Source.RequestID)
	n += sizeString(fPosition, e.Source.Position)
	n += sizeString(fTxID, e.Tx.ID)
	n += sizeUint(fTxIndex, uint64(e.Tx.Index))
	n += sizeUint(fTxCount, uint64(e.Tx.Count))
	if e.Tx.Last {
		n += sizeUint(fTxLast, 1)
	}
	n += sizeUint(fOp, uint64(e.Op))
	n += sizeString(fDatabase, e.Database)
	n += sizeString(fTable, e.Table)
	n += sizeRow(fKey, e.Key)
	n += sizeRow(fBefore, e.Before)
	n += sizeRow(fAfter, e.After)
	n += sizeUint(fSchemaVersion, e.SchemaVersion)
	n += sizeString(fStatement, e.Statement)
	for _, c := range e.Columns {
		n += protowire.SizeTag(fColumn) + protowire.SizeBytes(sizeString(fColName, c.Name)+sizeString(fColType, c.Type))
	}
	return n
}

func appendUint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b // proto3: zero values are not written
	}
	b = appendVarint(b, protowire.EncodeTag(num, protowire.VarintType))
	return appendVarint(b, v)
}

// appendVarint is protowire.AppendVarint, small enough to be inlined: most varints written here
// (tags, lengths, small numbers) are one byte.
func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func sizeUint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = appendVarint(b, protowire.EncodeTag(num, protowire.BytesType))
	b = appendVarint(b, uint64(len(s)))
	return append(b, s...)
}

func sizeString(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

// appendRow writes a present row (even an empty one) and nothing for a nil row, so that "no
// image" and "an image with no columns" decode apart.
func appendRow(b []byte, num protowire.Number, r Row) []byte {
	if r == nil {
		return b
	}
	b = appendVarint(b, protowire.EncodeTag(num, protowire.BytesType))
	row := len(b)
	b = append(b, 0) // the row's length, set below
	for i := range r {
		f := &r[i]
		b = appendVarint(b, protowire.EncodeTag(fRowField, protowire.BytesType))
		field := len(b)
		b = append(b, 0) // the field's length, set below
		b = appendString(b, fFieldName, f.Name)
		b = appendUint(b, fFieldKind, uint64(f.Value.Kind))
		v := &f.Value
		switch v.Kind {
		case KindInt:
			b = appendUint(b, fFieldInt, protowire.EncodeZigZag(v.Int))
		case KindUint, KindBool:
			b = appendUint(b, fFieldUint, v.Uint)
		case KindFloat32, KindFloat64:
			b = appendVarint(b, protowire.EncodeTag(fFieldFloat, protowire.Fixed64Type))
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v.Float)) // = protowire.AppendFixed64
		case KindBytes:
			b = appendVarint(b, protowire.EncodeTag(fFieldBytes, protowire.BytesType))
			b = appendVarint(b, uint64(len(v.Bytes)))
			b = append(b, v.Bytes...)
		case KindNull:
		default:
			b = appendString(b, fFieldStr, v.Str)
		}
		b = setLength(b, field)
	}
	return setLength(b, row)
}

// setLength sets the length of a nested message: b[at] is a one-byte placeholder, followed by the
// message up to the end of b. A length of 128 or more takes more bytes: the message moves up.
func setLength(b []byte, at int) []byte {
	n := len(b) - at - 1
	if n < 0x80 {
		b[at] = byte(n)
		return b
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	b = append(b, make([]byte, extra)...)
	copy(b[at+1+extra:], b[at+1:len(b)-extra])
	appendVarint(b[at:at], uint64(n))
	return b
}

// RowSizeBound bounds the encoding of a row in an entry (as its Key, Before or After) by the
// row's shape: fields fields whose names take names bytes and whose string and byte values take
// data bytes. The capture sizes its appends with it as it decodes rows, without a second walk
// over them (EncodedSize). A Field costs at most fieldOverhead beyond its name and data: its tag
// and length in the row, the name's tag and length, the kind, and the value's tag with either a
// 10-byte varint, 8 fixed bytes or a length; a row adds its own tag and length.
func RowSizeBound(fields, names, data int) int {
	const rowOverhead = 1 + binary.MaxVarintLen32 // tag, length up to 2^35
	const fieldOverhead = (1 + binary.MaxVarintLen32) + (1 + binary.MaxVarintLen32) + 2 + (1 + binary.MaxVarintLen64)
	return rowOverhead + fields*fieldOverhead + names + data
}

func sizeRow(num protowire.Number, r Row) int {
	if r == nil {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(rowBodySize(r))
}

// rowBodySize is the length of the Row message of r.
func rowBodySize(r Row) int {
	n := 0
	for i := range r {
		n += protowire.SizeTag(fRowField) + protowire.SizeBytes(fieldSize(&r[i]))
	}
	return n
}

// fieldSize is the length of the Field message of f, as appendRow writes it.
func fieldSize(f *Field) int {
	n := sizeString(fFieldName, f.Name) + sizeUint(fFieldKind, uint64(f.Value.Kind))
	v := &f.Value
	switch v.Kind {
	case KindInt:
		n += sizeUint(fFieldInt, protowire.EncodeZigZag(v.Int))
	case KindUint, KindBool:
		n += sizeUint(fFieldUint, v.Uint)
	case KindFloat32, KindFloat64:
		n += protowire.SizeTag(fFieldFloat) + protowire.SizeFixed64()
	case KindBytes:
		n += protowire.SizeTag(fFieldBytes) + protowire.SizeBytes(len(v.Bytes))
	case KindNull:
	default:
		n += sizeString(fFieldStr, v.Str)
	}
	return n
}

// DecodeEntry decodes an encoded entry. Byte slices in the result are copies: data may be reused.
func DecodeEntry(data []byte) (Entry, error) { return (*decoder)(nil).decode(data) }

// decoder decodes entries as DecodeEntry does. A non-nil decoder shares among the entries it
// decodes one copy of each short name that recurs from entry to entry (stream, origin, database,
// table, binlog file, column names), so that a Read of many entries does not allocate them again
// for every entry. Not safe for concurrent use.
type decoder struct {
	names map[string]string
}

const (
	maxInternLen   = 64  // longer strings are not shared
	maxInternNames = 256 // names kept per decoder
)

func newDecoder() *decoder { return &decoder{names: make(map[string]string)} }

// name returns raw as a string, shared with earlier calls for the same bytes.
func (d *decoder) name(raw []byte) string {
	if d == nil || len(raw) == 0 || len(raw) > maxInternLen {
		return string(raw)
	}
	if s, ok := d.names[string(raw)]; ok { // no allocation for the lookup
		return s
	}
	s := string(raw)
	if len(d.names) < maxInternNames {
		d.names[s] = s
	}
	return s
}

func (d *decoder) decode(data []byte) (Entry, error) {
	var e Entry
	if len(data) == 0 {
		return e, fmt.Errorf("%w: empty", ErrCorrupt)
	}
	if data[0] != encodingVersion {
		return e, fmt.Errorf("%w: unsupported version %d", ErrCorrupt, data[0])
	}
	err := walk(data[1:], func(num protowire.Number, typ protowire.Type, v uint64, raw []byte) error {
		switch num {
		case fStream:
			e.Stream = d.name(raw)
		case fSeq:
			e.Seq = v
		case fEpoch:
			e.Epoch = v
		case fHLCWall:
			e.HLC.Wall = int64(v)
		case fHLCLogical:
			if v > math.MaxUint32 {
				return errors.New("hlc logical out of range")
			}
			e.HLC.Logical = uint32(v)
		case fOrigin:
			e.Origin = d.name(raw)
		case fGTID:
			e.Source.GTID = string(raw)
		case fFile:
			e.Source.File = d.name(raw)
		case fPos:
			e.Source.Pos = v
		case fRequestID:
			e.Source.RequestID = string(raw)
		case fPosition:
			e.Source.Position = string(raw)
		case fTxID:
			e.Tx.ID = string(raw)
		case fTxIndex:
			e.Tx.Index = uint32(v)
		case fTxCount:
			e.Tx.Count = uint32(v)
		case fTxLast:
			e.Tx.Last = v != 0
		case fOp:
			if v == 0 || v > uint64(opMax) {
				return fmt.Errorf("unknown op %d", v)
			}
			e.Op = Op(v)
		case fDatabase:
			e.Database = d.name(raw)
		case fTable:
			e.Table = d.name(raw)
		case fKey, fBefore, fAfter:
			r, err := d.decodeRow(raw)
			if err != nil {
				return err
			}
			switch num {
			case fKey:
				e.Key = r
			case fBefore:
				e.Before = r
			default:
				e.After = r
			}
		case fSchemaVersion:
			e.SchemaVersion = v
		case fStatement:
			e.Statement = string(raw)
		case fColumn:
			var c Column
			if err := walk(raw, func(num protowire.Number, _ protowire.Type, _ uint64, raw []byte) error {
				switch num {
				case fColName:
					c.Name = d.name(raw)
				case fColType:
					c.Type = d.name(raw)
				}
				return nil
			}); err != nil {
				return err
			}
			e.Columns = append(e.Columns, c)
		}
		return nil
	})
	if err != nil {
		return Entry{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return e, nil
}

func (d *decoder) decodeRow(data []byte) (Row, error) {
	r := make(Row, 0, countFields(data, fRowField)) // never nil: a present row, even empty
	err := walk(data, func(num protowire.Number, _ protowire.Type, _ uint64, raw []byte) error {
		if num != fRowField {
			return nil
		}
		var f Field
		err := walk(raw, func(num protowire.Number, _ protowire.Type, v uint64, raw []byte) error {
			switch num {
			case fFieldName:
				f.Name = d.name(raw)
			case fFieldKind:
				if v > uint64(kindMax) {
					return fmt.Errorf("unknown value kind %d", v)
				}
				f.Value.Kind = Kind(v)
			case fFieldInt:
				f.Value.Int = protowire.DecodeZigZag(v)
			case fFieldUint:
				f.Value.Uint = v
			case fFieldFloat:
				f.Value.Float = math.Float64frombits(v)
			case fFieldStr:
				f.Value.Str = string(raw)
			case fFieldBytes:
				f.Value.Bytes = append([]byte{}, raw...)
			}
			return nil
		})
		r = append(r, f)
		return err
	})
	return r, err
}

// countFields returns how many fields numbered num a message holds (as far as it parses: walk
// reports the errors).
func countFields(b []byte, num protowire.Number) int {
	count := 0
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			break
		}
		b = b[l:]
		l = protowire.ConsumeFieldValue(n, typ, b)
		if l < 0 {
			break
		}
		b = b[l:]
		if n == num {
			count++
		}
	}
	return count
}

// walk calls fn for each field of a message: v holds varint and fixed values, raw the bytes of
// length-delimited ones. Fields of a type fn does not expect are passed as they are; fn ignores
// numbers it does not know (forward compatibility).
func walk(b []byte, fn func(num protowire.Number, typ protowire.Type, v uint64, raw []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v uint64
		var raw []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.Fixed64Type:
			v, n = protowire.ConsumeFixed64(b)
		case protowire.Fixed32Type:
			var v32 uint32
			v32, n = protowire.ConsumeFixed32(b)
			v = uint64(v32)
		case protowire.BytesType:
			raw, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := fn(num, typ, v, raw); err != nil {
			return err
		}
	}
	return nil
}
