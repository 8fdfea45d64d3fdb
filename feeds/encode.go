package feeds

import (
	"strconv"
	"unicode/utf8"

	"github.com/musicd/musicd/journal"
)

// appendEnvelope appends the JSON of NewEnvelope(e, site) to b, byte for byte what encoding/json
// writes for it (a test checks), without reflection: the relay encodes every entry, and this is
// most of its CPU time. truncated leaves the images and DDL out (see Envelope.Truncated).
func appendEnvelope(b []byte, e *journal.Entry, site string, truncated bool) []byte {
	origin := e.Origin
	if origin == "" {
		origin = site
	}
	row := func(b []byte, r journal.Row) []byte {
		if truncated {
			return append(b, "null"...)
		}
		return appendRow(b, r)
	}
	b = append(b, `{"before":`...)
	b = row(b, e.Before)
	b = append(b, `,"after":`...)
	b = row(b, e.After)
	b = append(b, `,"key":`...)
	b = row(b, e.Key)
	b = append(b, `,"op":`...)
	b = appendJSONString(b, OpCode(e.Op))
	var tsb [20]byte
	ts := strconv.AppendInt(tsb[:0], e.HLC.Wall/1e6, 10)
	b = append(b, `,"ts_ms":`...)
	b = append(b, ts...)
	b = append(b, `,"source":{"version":"`+EnvelopeVersion+`","connector":"musicd","site":`...)
	b = appendJSONString(b, origin)
	b = append(b, `,"database":`...)
	b = appendJSONString(b, e.Database)
	b = append(b, `,"table":`...)
	b = appendJSONString(b, e.Table)
	b = append(b, `,"gtid":`...)
	b = appendNullable(b, e.Source.GTID)
	b = append(b, `,"file":`...)
	b = appendNullable(b, e.Source.File)
	b = append(b, `,"pos":`...)
	b = strconv.AppendUint(b, e.Source.Pos, 10)
	b = append(b, `,"request_id":`...)
	b = appendNullable(b, e.Source.RequestID)
	b = append(b, `,"stream":`...)
	b = appendJSONString(b, e.Stream)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"epoch":`...)
	b = strconv.AppendUint(b, e.Epoch, 10)
	b = append(b, `,"ts_ms":`...)
	b = append(b, ts...)
	b = append(b, `,"hlc":{"wall":`...)
	b = strconv.AppendInt(b, e.HLC.Wall, 10)
	b = append(b, `,"logical":`...)
	b = strconv.AppendUint(b, uint64(e.HLC.Logical), 10)
	b = append(b, `},"schema_version":`...)
	b = strconv.AppendUint(b, e.SchemaVersion, 10)
	b = append(b, `},"transaction":`...)
	if e.Tx.ID == "" {
		b = append(b, "null"...)
	} else {
		b = append(b, `{"id":`...)
		b = appendJSONString(b, e.Tx.ID)
		b = append(b, `,"order":`...)
		b = strconv.AppendUint(b, uint64(e.Tx.Index), 10)
		b = append(b, `,"total":`...)
		b = strconv.AppendUint(b, uint64(e.Tx.Count), 10)
		b = append(b, `,"last":`...)
		b = strconv.AppendBool(b, e.Tx.Last)
		b = append(b, '}')
	}
	if e.Op == journal.OpDDL && !truncated {
		b = append(b, `,"ddl":{"statement":`...)
		b = appendJSONString(b, e.Statement)
		b = append(b, `,"columns":[`...)
		for i, c := range e.Columns {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"name":`...)
			b = appendJSONString(b, c.Name)
			b = append(b, `,"type":`...)
			b = appendJSONString(b, c.Type)
			b = append(b, '}')
		}
		b = append(b, "]}"...)
	}
	if truncated {
		b = append(b, `,"truncated":true`...)
	}
	return append(b, '}')
}

func appendNullable(b []byte, s string) []byte {
	if s == "" {
		return append(b, "null"...)
	}
	return appendJSONString(b, s)
}

// appendRow renders a row as a JSON object in column order, or null for a nil row.
func appendRow(b []byte, r journal.Row) []byte {
	if r == nil {
		return append(b, "null"...)
	}
	b = append(b, '{')
	for i, f := range r {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, f.Name)
		b = append(b, ':')
		b = appendValue(b, f.Value)
	}
	return append(b, '}')
}

// plainJSON[c] reports whether byte c stands for itself inside a JSON string as encoding/json
// writes it: ASCII from 0x20 on, except '"', '\\' and the HTML-unsafe '<', '>' and '&'. Bytes from
// 0x80 on are false: they take the UTF-8 path.
var plainJSON = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendJSONString appends s as a JSON string the way encoding/json does: HTML-safe (<, > and &
// escaped), U+2028 and U+2029 escaped, invalid UTF-8 replaced by U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if plainJSON[s[i]] { // most bytes: copied below with the run they belong to
			i++
			continue
		}
		if c := s[i]; c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
