package state

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/musicd/musicd/journal"
)

// Type is a column type. The set is what Cassandra 2.1 and current Cassandra both accept, and
// what the embedded store reproduces exactly.
type Type string

// Column types and how they travel: JSON in the REST API, a journal.Value in entries.
const (
	Text      Type = "text"      // JSON string; journal.KindString
	Int       Type = "int"       // JSON integer, 32-bit; journal.KindInt
	Bigint    Type = "bigint"    // JSON integer (or a string of digits beyond 2^53); journal.KindInt
	Double    Type = "double"    // JSON number; journal.KindFloat64
	Float     Type = "float"     // JSON number, 32-bit; journal.KindFloat32
	Boolean   Type = "boolean"   // JSON true/false; journal.KindBool
	Blob      Type = "blob"      // JSON string, standard base64; journal.KindBytes
	Timestamp Type = "timestamp" // JSON string, RFC 3339, kept to milliseconds; journal.KindTemporal
	UUID      Type = "uuid"      // JSON string, canonical lower-case form; journal.KindString
	Decimal   Type = "decimal"   // JSON number or string of digits; journal.KindDecimal
)

// Types lists the column types in documentation order.
var Types = []Type{Text, Int, Bigint, Double, Float, Boolean, Blob, Timestamp, UUID, Decimal}

func (t Type) valid() bool {
	for _, k := range Types {
		if t == k {
			return true
		}
	}
	return false
}

// Limits of names, schemas, keys and values (invariant 7: nothing unbounded).
const (
	MaxIdentifierLen = 48      // keyspace, table and column names (Cassandra's limit)
	MaxColumns       = 256     // columns of one table
	MaxKeyBytes      = 4 << 10 // encoded primary key of one row
	MaxValueBytes    = 1 << 20 // one column value
	MaxRowBytes      = 1 << 20 // the values of one row
	MaxPageRows      = 1000    // rows in one page of a select
	DefaultPageRows  = 100
	MaxDataCenters   = 16
	MaxReplicas      = 15 // replicas in one data center
)

// VersionColumn is the column musicd adds to every table: the write timestamp (microseconds) of
// the row's last change, which is its version (the ETag of the REST API). Names starting with
// "music_" are reserved.
const VersionColumn = "music_ts"

// identChars reports whether name is lower-case letters, digits and _, starting with a letter
// (checked on every request, so by hand rather than with a regexp).
func identChars(name string) bool {
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z':
		case i > 0 && ('0' <= c && c <= '9' || c == '_'):
		default:
			return false
		}
	}
	return len(name) > 0
}

// ValidateIdentifier checks a keyspace, table or column name: 1-48 bytes of lower-case letters,
// digits and underscores, starting with a letter, and not in musicd's reserved names. what names
// the kind of identifier in the error.
func ValidateIdentifier(what, name string) error {
	if len(name) == 0 || len(name) > MaxIdentifierLen {
		return fmt.Errorf("%w: %s name %q must be 1-%d bytes", ErrInvalid, what, name, MaxIdentifierLen)
	}
	if !identChars(name) {
		return fmt.Errorf("%w: %s name %q: use lower-case letters, digits and _, starting with a letter", ErrInvalid, what, name)
	}
	if strings.HasPrefix(name, "music_") || strings.HasPrefix(name, "system") {
		return fmt.Errorf("%w: %s name %q: names starting with music_ or system are reserved", ErrInvalid, what, name)
	}
	return nil
}

// Keyspace is a namespace of tables, replicated per data center.
type Keyspace struct {
	Name string `json:"name"`
	// Replication maps data center names to replica counts. Empty: the daemon's default.
	Replication map[string]int `json:"replication,omitempty"`
}

var dcRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// Validate checks the keyspace definition.
func (k Keyspace) Validate() error {
	if err := ValidateIdentifier("keyspace", k.Name); err != nil {
		return err
	}
	if len(k.Replication) > MaxDataCenters {
		return fmt.Errorf("%w: keyspace %s: %d data centers (max %d)", ErrInvalid, k.Name, len(k.Replication), MaxDataCenters)
	}
	for dc, n := range k.Replication {
		if !dcRE.MatchString(dc) {
			return fmt.Errorf("%w: keyspace %s: data center name %q: letters, digits, _ . - only", ErrInvalid, k.Name, dc)
		}
		if n < 1 || n > MaxReplicas {
			return fmt.Errorf("%w: keyspace %s: data center %s: replicas %d outside 1-%d", ErrInvalid, k.Name, dc, n, MaxReplicas)
		}
	}
	return nil
}

// Column is one column of a table.
type Column struct {
	Name string `json:"name"`
	Type Type   `json:"type"`
}

// Table describes a table: its columns and primary key (partition key columns, then clustering
// columns, both in order). Rows are addressed by all primary key columns.
type Table struct {
	Keyspace     string   `json:"keyspace"`
	Name         string   `json:"name"`
	Columns      []Column `json:"columns"`
	PartitionKey []string `json:"partition_key"`
	Clustering   []string `json:"clustering,omitempty"`
}

// Validate checks the table definition.
func (t Table) Validate() error {
	if err := ValidateIdentifier("keyspace", t.Keyspace); err != nil {
		return err
	}
	if err := ValidateIdentifier("table", t.Name); err != nil {
		return err
	}
	if len(t.Columns) == 0 || len(t.Columns) > MaxColumns {
		return fmt.Errorf("%w: table %s: %d columns (1-%d)", ErrInvalid, t.Name, len(t.Columns), MaxColumns)
	}
	seen := map[string]bool{}
	for _, c := range t.Columns {
		if err := ValidateIdentifier("column", c.Name); err != nil {
			return err
		}
		if seen[c.Name] {
			return fmt.Errorf("%w: table %s: column %s declared twice", ErrInvalid, t.Name, c.Name)
		}
		seen[c.Name] = true
		if !c.Type.valid() {
			return fmt.Errorf("%w: table %s: column %s: unknown type %q (one of %s)", ErrInvalid, t.Name, c.Name, c.Type, typeList())
		}
	}
	if len(t.PartitionKey) == 0 {
		return fmt.Errorf("%w: table %s: partition_key needs at least one column", ErrInvalid, t.Name)
	}
	inKey := map[string]bool{}
	for _, k := range append(append([]string{}, t.PartitionKey...), t.Clustering...) {
		if !seen[k] {
			return fmt.Errorf("%w: table %s: key column %q is not a declared column", ErrInvalid, t.Name, k)
		}
		if inKey[k] {
			return fmt.Errorf("%w: table %s: key column %s listed twice", ErrInvalid, t.Name, k)
		}
		inKey[k] = true
	}
	if len(inKey) == len(t.Columns) {
		return fmt.Errorf("%w: table %s: needs at least one column outside the primary key", ErrInvalid, t.Name)
	}
	return nil
}

func typeList() string {
	s := make([]string, len(Types))
	for i, t := range Types {
		s[i] = string(t)
	}
	return strings.Join(s, ", ")
}

// KeyColumns returns the primary key columns in order: partition key, then clustering.
func (t Table) KeyColumns() []string {
	return append(append([]string{}, t.PartitionKey...), t.Clustering...)
}

// Column returns the column named name.
func (t Table) Column(name string) (Column, bool) {
	for _, c := range t.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return Column{}, false
}

// IsKey reports whether column name is part of the primary key.
func (t Table) IsKey(name string) bool {
	for _, k := range t.PartitionKey {
		if k == name {
			return true
		}
	}
	for _, k := range t.Clustering {
		if k == name {
			return true
		}
	}
	return false
}

// RegularColumns returns the columns outside the primary key, in declared order.
func (t Table) RegularColumns() []Column {
	var out []Column
	for _, c := range t.Columns {
		if !t.IsKey(c.Name) {
			out = append(out, c)
		}
	}
	return out
}

// kindOf is the journal kind that carries values of type t.
func kindOf(t Type) journal.Kind {
	switch t {
	case Text, UUID:
		return journal.KindString
	case Int, Bigint:
		return journal.KindInt
	case Double:
		return journal.KindFloat64
	case Float:
		return journal.KindFloat32
	case Boolean:
		return journal.KindBool
	case Blob:
		return journal.KindBytes
	case Timestamp:
		return journal.KindTemporal
	case Decimal:
		return journal.KindDecimal
	}
	return journal.KindNull
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
var decimalRE = regexp.MustCompile(`^-?[0-9]{1,100}(\.[0-9]{1,100})?$`)

// TimestampLayout is how timestamp values are written: RFC 3339 in UTC with milliseconds.
const TimestampLayout = "2006-01-02T15:04:05.000Z07:00"

// ParseJSON converts a JSON value for a column of type t into a journal value: JSON null is
// journal.Null(). Errors wrap ErrInvalid and name the column.
func ParseJSON(col Column, raw json.RawMessage) (journal.Value, error) {
	bad := func(format string, a ...any) (journal.Value, error) {
		return journal.Value{}, fmt.Errorf("%w: column %s (%s): %s", ErrInvalid, col.Name, col.Type, fmt.Sprintf(format, a...))
	}
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return journal.Null(), nil
	}
	if len(raw) > 4*MaxValueBytes/3+8 {
		return bad("value longer than %d bytes", MaxValueBytes)
	}
	str := func() (string, bool) {
		var v string
		if s[0] != '"' || json.Unmarshal(raw, &v) != nil {
			return "", false
		}
		return v, true
	}
	switch col.Type {
	case Text:
		v, ok := str()
		if !ok {
			return bad("want a string")
		}
		if len(v) > MaxValueBytes {
			return bad("value longer than %d bytes", MaxValueBytes)
		}
		return journal.String(v), nil
	case UUID:
		v, ok := str()
		v = strings.ToLower(v)
		if !ok || !uuidRE.MatchString(v) {
			return bad("want a UUID string like \"123e4567-e89b-12d3-a456-426614174000\"")
		}
		return journal.String(v), nil
	case Int, Bigint:
		digits := s
		if v, ok := str(); ok {
			digits = v
		}
		n, err := strconv.ParseInt(digits, 10, 64)
		if err != nil {
			return bad("want an integer, got %s", truncate(s))
		}
		if col.Type == Int && (n < math.MinInt32 || n > math.MaxInt32) {
			return bad("%d is outside the 32-bit range", n)
		}
		return journal.Int(n), nil
	case Double, Float:
		var f float64
		if err := json.Unmarshal(raw, &f); err != nil {
			return bad("want a number, got %s", truncate(s))
		}
		if col.Type == Float {
			if math.Abs(f) > math.MaxFloat32 {
				return bad("%g is outside the 32-bit float range", f)
			}
			return journal.Value{Kind: journal.KindFloat32, Float: float64(float32(f))}, nil
		}
		return journal.Float64(f), nil
	case Boolean:
		switch s {
		case "true":
			return journal.Bool(true), nil
		case "false":
			return journal.Bool(false), nil
		}
		return bad("want true or false, got %s", truncate(s))
	case Blob:
		v, ok := str()
		if !ok {
			return bad("want a base64 string")
		}
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return bad("not standard base64: %v", err)
		}
		if len(b) > MaxValueBytes {
			return bad("value longer than %d bytes", MaxValueBytes)
		}
		return journal.Bytes(b), nil
	case Timestamp:
		v, ok := str()
		if !ok {
			return bad("want an RFC 3339 string like \"2026-11-24T12:00:00.000Z\"")
		}
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return bad("want an RFC 3339 string like \"2026-11-24T12:00:00.000Z\": %v", err)
		}
		return journal.Value{Kind: journal.KindTemporal, Str: FormatTimestamp(t)}, nil
	case Decimal:
		digits := s
		if v, ok := str(); ok {
			digits = v
		}
		if !decimalRE.MatchString(digits) {
			return bad("want a decimal number like \"-12.50\", got %s", truncate(s))
		}
		return journal.Decimal(digits), nil
	}
	return bad("unknown type")
}

// FormatTimestamp renders t as a timestamp column value (UTC, milliseconds).
func FormatTimestamp(t time.Time) string {
	return t.UTC().Truncate(time.Millisecond).Format(TimestampLayout)
}

// ParseKeyText converts the text form of a key value (a URL path segment) for column col. Text
// and UUID take the text as it is; other types take their JSON spelling without quotes.
func ParseKeyText(col Column, text string) (journal.Value, error) {
	switch col.Type {
	case Text, UUID, Blob, Timestamp:
		raw, _ := json.Marshal(text)
		return ParseJSON(col, raw)
	}
	if text == "" || text == "null" {
		return journal.Value{}, fmt.Errorf("%w: key column %s: empty value", ErrInvalid, col.Name)
	}
	return ParseJSON(col, json.RawMessage(text))
}

// ToJSON converts a journal value of a column to its JSON form (see the Type constants).
func ToJSON(col Column, v journal.Value) any {
	switch v.Kind {
	case journal.KindNull:
		return nil
	case journal.KindString, journal.KindTemporal:
		return v.Str
	case journal.KindInt:
		if v.Int > 1<<53 || v.Int < -(1<<53) {
			return strconv.FormatInt(v.Int, 10)
		}
		return v.Int
	case journal.KindFloat32, journal.KindFloat64:
		if math.IsInf(v.Float, 0) || math.IsNaN(v.Float) {
			return strconv.FormatFloat(v.Float, 'g', -1, 64)
		}
		return v.Float
	case journal.KindBool:
		return v.Uint != 0
	case journal.KindBytes:
		return base64.StdEncoding.EncodeToString(v.Bytes)
	case journal.KindDecimal:
		return json.Number(v.Str)
	}
	return nil
}

// checkKind verifies that v is a value of column col (its kind, or null).
func checkKind(col Column, v journal.Value) error {
	if v.Kind == journal.KindNull || v.Kind == kindOf(col.Type) {
		return nil
	}
	return fmt.Errorf("%w: column %s (%s): value of kind %d", ErrInvalid, col.Name, col.Type, v.Kind)
}

// CompareValues orders two values of the same column type: -1, 0 or 1. Null sorts first. It is
// the clustering order of the embedded store and the order of column conditions.
func CompareValues(a, b journal.Value) int {
	if a.Kind == journal.KindNull || b.Kind == journal.KindNull {
		switch {
		case a.Kind == b.Kind:
			return 0
		case a.Kind == journal.KindNull:
			return -1
		}
		return 1
	}
	switch a.Kind {
	case journal.KindInt:
		return cmp3(a.Int < b.Int, a.Int > b.Int)
	case journal.KindFloat32, journal.KindFloat64:
		return cmp3(a.Float < b.Float, a.Float > b.Float)
	case journal.KindBool:
		return cmp3(a.Uint < b.Uint, a.Uint > b.Uint)
	case journal.KindBytes:
		return strings.Compare(string(a.Bytes), string(b.Bytes))
	case journal.KindDecimal:
		x, _ := new(big.Rat).SetString(a.Str)
		y, _ := new(big.Rat).SetString(b.Str)
		if x != nil && y != nil {
			return x.Cmp(y)
		}
	}
	return strings.Compare(a.Str, b.Str)
}

func cmp3(less, more bool) int {
	switch {
	case less:
		return -1
	case more:
		return 1
	}
	return 0
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
