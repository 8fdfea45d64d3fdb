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

// Resolution is how the appliers resolve a conflict on a row of a table: the same row changed at
// two sites before each saw the other's change.
type Resolution string

// Resolutions. The default is ResolveLWW.
const (
	// ResolveLWW: the last writer wins by HLC timestamp (ties by origin site name), deletes
	// included; the same result at every site.
	ResolveLWW Resolution = "lww"
	// ResolvePriority: the write of the site earlier in the applier's site_priority wins; writes
	// of sites of equal rank fall back to lww.
	ResolvePriority Resolution = "priority"
	// ResolveDeadLetter: the target's row is kept and the incoming change goes to the applier's
	// dead-letter table.
	ResolveDeadLetter Resolution = "dead_letter"
)

// TableRule gives the mode of the tables whose "database.table" name matches Match, and how
// their conflicts are resolved. Match has a database pattern and a table pattern separated by the
// first '.', each in path.Match syntax ("*" any run of characters, "?" one character, "[a-z]" a
// class), e.g. "shop.*", "*.audit_?", "crm.customers".
type TableRule struct {
	Match string `yaml:"match"`
	Mode  Mode   `yaml:"mode"`
	// Conflicts is the resolution of conflicts on the tables' rows (empty: lww).
	Conflicts Resolution `yaml:"conflicts"`
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
		switch r.Conflicts {
		case "", ResolveLWW, ResolvePriority, ResolveDeadLetter:
		default:
			return fmt.Errorf("[%d].conflicts: %q is not lww, priority or dead_letter", i, r.Conflicts)
		}
	}
	return nil
}

// ModeOf returns the mode of database.table.
func (t Tables) ModeOf(database, table string) Mode {
	if r, ok := t.ruleOf(database, table); ok {
		return r.Mode
	}
	return ModeOff
}

// ResolutionOf returns how conflicts on rows of database.table are resolved.
func (t Tables) ResolutionOf(database, table string) Resolution {
	if r, ok := t.ruleOf(database, table); ok && r.Conflicts != "" {
		return r.Conflicts
	}
	return ResolveLWW
}

// ruleOf returns the first rule that matches database.table.
func (t Tables) ruleOf(database, table string) (TableRule, bool) {
	for _, r := range t {
		db, tb, _ := strings.Cut(r.Match, ".")
		if ok, _ := path.Match(db, database); !ok {
			continue
		}
		if ok, _ := path.Match(tb, table); ok {
			return r, true
		}
	}
	return TableRule{}, false
}

// Selected reports whether database.table is captured (its mode is not off).
func (t Tables) Selected(database, table string) bool { return t.ModeOf(database, table) != ModeOff }

// HasResolution reports whether some rule resolves conflicts by res.
func (t Tables) HasResolution(res Resolution) bool {
	for _, r := range t {
		if r.Conflicts == res {
			return true
		}
	}
	return false
}

// HasMode reports whether some rule gives mode m.
func (t Tables) HasMode(m Mode) bool {
	for _, r := range t {
		if r.Mode == m {
			return true
		}
	}
	return false
}
