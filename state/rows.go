package state

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/musicd/musicd/journal"
)

// ParseKey converts the text forms of the primary key values (one per key column, in KeyColumns
// order; the REST API takes them from the path) into a key row.
func ParseKey(t Table, parts []string) (journal.Row, error) {
	cols := t.KeyColumns()
	if len(parts) != len(cols) {
		return nil, fmt.Errorf("%w: table %s.%s: key needs %d values (%v), got %d", ErrInvalid, t.Keyspace, t.Name, len(cols), cols, len(parts))
	}
	key := make(journal.Row, len(cols))
	for i, name := range cols {
		col, _ := t.Column(name)
		v, err := ParseKeyText(col, parts[i])
		if err != nil {
			return nil, err
		}
		key[i] = journal.Field{Name: name, Value: v}
	}
	return key, checkKey(t, key)
}

// ParseValues converts a JSON object of column values. With withKey, the object must hold every
// primary key column (returned as key, in KeyColumns order) and the other columns go to values;
// without, it may hold regular columns only. Unknown columns are an error.
func ParseValues(t Table, obj map[string]json.RawMessage, withKey bool) (key, values journal.Row, err error) {
	names := make([]string, 0, len(obj))
	for n := range obj {
		names = append(names, n)
	}
	sort.Strings(names) // deterministic errors
	byName := map[string]journal.Value{}
	for _, n := range names {
		col, ok := t.Column(n)
		if !ok {
			return nil, nil, fmt.Errorf("%w: table %s.%s has no column %q", ErrInvalid, t.Keyspace, t.Name, n)
		}
		if t.IsKey(n) && !withKey {
			return nil, nil, fmt.Errorf("%w: column %s is part of the primary key: give it in the row's path, not in the values", ErrInvalid, n)
		}
		v, err := ParseJSON(col, obj[n])
		if err != nil {
			return nil, nil, err
		}
		byName[n] = v
	}
	if withKey {
		for _, n := range t.KeyColumns() {
			v, ok := byName[n]
			if !ok {
				return nil, nil, fmt.Errorf("%w: values lack primary key column %s", ErrInvalid, n)
			}
			key = append(key, journal.Field{Name: n, Value: v})
		}
		if err := checkKey(t, key); err != nil {
			return nil, nil, err
		}
	}
	for _, c := range t.RegularColumns() {
		if v, ok := byName[c.Name]; ok {
			values = append(values, journal.Field{Name: c.Name, Value: v})
		}
	}
	return key, values, checkRowSize(values)
}

// checkKey verifies a key row: every key column, in order, non-null, of its type, and bounded.
func checkKey(t Table, key journal.Row) error {
	cols := t.KeyColumns()
	if len(key) != len(cols) {
		return fmt.Errorf("%w: key needs columns %v", ErrInvalid, cols)
	}
	size := 0
	for i, f := range key {
		if f.Name != cols[i] {
			return fmt.Errorf("%w: key column %d is %s, want %s", ErrInvalid, i, f.Name, cols[i])
		}
		if f.Value.Kind == journal.KindNull {
			return fmt.Errorf("%w: key column %s is null", ErrInvalid, f.Name)
		}
		col, _ := t.Column(f.Name)
		if err := checkKind(col, f.Value); err != nil {
			return err
		}
		size += len(f.Value.Str) + len(f.Value.Bytes) + 8
	}
	if size > MaxKeyBytes {
		return fmt.Errorf("%w: primary key of %d bytes (max %d)", ErrInvalid, size, MaxKeyBytes)
	}
	return nil
}

func checkRowSize(values journal.Row) error {
	size := 0
	for _, f := range values {
		size += len(f.Value.Str) + len(f.Value.Bytes) + 8
	}
	if size > MaxRowBytes {
		return fmt.Errorf("%w: row values of %d bytes (max %d)", ErrInvalid, size, MaxRowBytes)
	}
	return nil
}

// RowJSON renders a stored row as a JSON object of column values.
func RowJSON(t Table, r StoredRow) map[string]any {
	out := make(map[string]any, len(r.Values))
	for _, f := range r.Values {
		col, _ := t.Column(f.Name)
		out[f.Name] = ToJSON(col, f.Value)
	}
	return out
}

// ParseFilters converts column=value pairs (the REST API's query parameters) into filters.
func ParseFilters(t Table, params map[string]string) ([]Filter, error) {
	names := make([]string, 0, len(params))
	for n := range params {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []Filter
	for _, n := range names {
		col, ok := t.Column(n)
		if !ok {
			return nil, fmt.Errorf("%w: table %s.%s has no column %q to filter on", ErrInvalid, t.Keyspace, t.Name, n)
		}
		v, err := ParseKeyText(col, params[n])
		if err != nil {
			return nil, err
		}
		out = append(out, Filter{Column: n, Value: v})
	}
	return out, nil
}
