package policies

import (
	"strings"
	"testing"
)

func TestTables(t *testing.T) {
	rules := Tables{
		{Match: "shop.tmp_*", Mode: ModeOff},
		{Match: "shop.orders", Mode: ModeSync},
		{Match: "shop.*", Mode: ModeAsync},
		{Match: "*.audit_?", Mode: ModeAsync},
	}
	if err := rules.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		db, table string
		want      Mode
	}{
		{"shop", "orders", ModeSync},
		{"shop", "items", ModeAsync},
		{"shop", "tmp_x", ModeOff},
		{"crm", "audit_1", ModeAsync},
		{"crm", "audit_12", ModeOff},
		{"crm", "customers", ModeOff},
		{"shopping", "orders", ModeOff},
	} {
		if got := rules.ModeOf(tc.db, tc.table); got != tc.want {
			t.Errorf("%s.%s: %s, want %s", tc.db, tc.table, got, tc.want)
		}
	}
	if rules.Selected("crm", "customers") || !rules.Selected("shop", "items") {
		t.Error("Selected disagrees with ModeOf")
	}
	for rule, want := range map[TableRule]string{
		{Match: "shop", Mode: ModeSync}:      "[0].match",
		{Match: ".t", Mode: ModeSync}:        "[0].match",
		{Match: "shop.[", Mode: ModeSync}:    "[0].match",
		{Match: "shop.t", Mode: "sometimes"}: "[0].mode",
		{Match: "shop.t", Mode: ""}:          "[0].mode",
	} {
		if err := (Tables{rule}).Validate(); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%+v: %v, want prefix %s", rule, err, want)
		}
	}
}

func TestConflictResolutions(t *testing.T) {
	tables := Tables{
		{Match: "shop.audit_*", Mode: ModeAsync, Conflicts: ResolveDeadLetter},
		{Match: "shop.*", Mode: ModeSync, Conflicts: ResolvePriority},
		{Match: "crm.*", Mode: ModeAsync},
	}
	if err := tables.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		db, table string
		want      Resolution
	}{
		{"shop", "audit_1", ResolveDeadLetter}, {"shop", "orders", ResolvePriority}, {"crm", "x", ResolveLWW}, {"other", "x", ResolveLWW},
	} {
		if got := tables.ResolutionOf(c.db, c.table); got != c.want {
			t.Errorf("%s.%s: %s, want %s", c.db, c.table, got, c.want)
		}
	}
	if !tables.HasResolution(ResolvePriority) || tables.HasResolution(ResolveLWW) {
		t.Error("HasResolution")
	}
	bad := Tables{{Match: "a.b", Mode: ModeAsync, Conflicts: "coin"}}
	if err := bad.Validate(); err == nil || !strings.HasPrefix(err.Error(), "[0].conflicts:") {
		t.Errorf("an unknown resolution: %v", err)
	}
}
