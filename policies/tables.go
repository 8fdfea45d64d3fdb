package policies

import (
	"fmt"
	"path"
	"strings"
)

// Mode is how a table replicates between sites.
type Mode string

// Modes. A sync table's transaction is acknowledged to its database only once its changes are
// durable beyond the site; an async one at once; an off table is not captured at all.
const (
	ModeSync  Mode = "sync"
	ModeAsync Mode = "async"
	ModeOff   Mode = "off"
)

// TableRule gives the mode of the tables whose "database.table" name matches Match. Match has a
// database pattern and a table pattern separated by the first '.', each in path.Match syntax
// ("*" any run of characters, "?" one character, "[a-z]" a class), e.g. "shop.*", "*.audit_?",
// "crm.customers".
type TableRule struct {
	Match string `yaml:"match"`
	Mode  Mode   `yaml:"mode"`
}

// Tables are ordered rules: the first rule that matches a table decides its mode; a table that no
// rule matches is off. Put exclusions (mode off) before the broader rules they carve out of.
type Tables []TableRule

// Validate reports the first invalid rule by index.
func (t Tables) Validate() error {
	for i, r := range t {
		db, table, ok := strings.Cut(r.Match, ".")
		if !ok || db == "" || table == "" {
			return fmt.Errorf("[%d].match: %q is not \"database.table\" (patterns allowed)", i, r.Match)
		}
		for _, p := range []string{db, table} {
			if _, err := path.Match(p, ""); err != nil {
				return fmt.Errorf("[%d].match: %q: %w", i, r.Match, err)
			}
		}
		switch r.Mode {
		case ModeSync, ModeAsync, ModeOff:
		default:
			return fmt.Errorf("[%d].mode: %q is not sync, async or off", i, r.Mode)
		}
	}
	return nil
}

// ModeOf returns the mode of database.table.
func (t Tables) ModeOf(database, table string) Mode {
	for _, r := range t {
		db, tb, _ := strings.Cut(r.Match, ".")
		if ok, _ := path.Match(db, database); !ok {
			continue
		}
		if ok, _ := path.Match(tb, table); ok {
			return r.Mode
		}
	}
	return ModeOff
}

// Selected reports whether database.table is captured (its mode is not off).
func (t Tables) Selected(database, table string) bool { return t.ModeOf(database, table) != ModeOff }

// HasMode reports whether some rule gives mode m.
func (t Tables) HasMode(m Mode) bool {
	for _, r := range t {
		if r.Mode == m {
			return true
		}
	}
	return false
}
