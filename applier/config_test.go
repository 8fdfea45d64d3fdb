package applier

import (
	"strings"
	"testing"

	"github.com/musicd/musicd/policies"
)

func TestConfigValidate(t *testing.T) {
	good := Config{Site: "b", Addr: "127.0.0.1:3306", User: "u", Streams: []string{"binlog/a/src"},
		Tables: policies.Tables{{Match: "shop.*", Mode: policies.ModeAsync}}}.WithDefaults()
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for want, mod := range map[string]func(*Config){
		"site:":          func(c *Config) { c.Site = "B!" },
		"addr:":          func(c *Config) { c.Addr = "nohost" },
		"user:":          func(c *Config) { c.User = "" },
		"meta_database:": func(c *Config) { c.MetaDatabase = "x`y" },
		"streams: at":    func(c *Config) { c.Streams = nil },
		"streams[0]:":    func(c *Config) { c.Streams = []string{"has space"} },
		"streams: \"":    func(c *Config) { c.LocalStreams = []string{"binlog/a/src"} },
		"tables[0]":      func(c *Config) { c.Tables = policies.Tables{{Match: "x", Mode: policies.ModeSync}} },
		"tables[0].conflicts": func(c *Config) {
			c.Tables = policies.Tables{{Match: "a.b", Mode: policies.ModeAsync, Conflicts: "coin"}}
		},
		"site_priority: required": func(c *Config) {
			c.Tables = policies.Tables{{Match: "a.b", Mode: policies.ModeAsync, Conflicts: ResolvePriority}}
		},
		"site_priority[1]": func(c *Config) { c.SitePriority = []string{"a", "B B"} },
		"ddl:":             func(c *Config) { c.DDL = "maybe" },
		"on_error:":        func(c *Config) { c.OnError = "ignore" },
		"batch_entries:":   func(c *Config) { c.BatchEntries = 20000 },
		"parallel:":        func(c *Config) { c.Parallel = 65 },
	} {
		c := good
		mod(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	c := good
	c.Tables = policies.Tables{{Match: "shop.audit_*", Mode: policies.ModeAsync, Conflicts: ResolveDeadLetter},
		{Match: "shop.*", Mode: policies.ModeAsync, Conflicts: ResolvePriority}, {Match: "crm.*", Mode: policies.ModeAsync}}
	c.SitePriority = []string{"a", "b"}
	if r := c.ruleFor("shop", "audit_1"); r.Resolve != ResolveDeadLetter {
		t.Errorf("audit_1: %v", r.Resolve)
	}
	if r := c.ruleFor("shop", "orders"); r.Resolve != ResolvePriority || r.LocalSite != "b" || len(r.Priority) != 2 {
		t.Errorf("orders: %+v", r)
	}
	if r := c.ruleFor("crm", "x"); r.Resolve != ResolveLWW {
		t.Errorf("a rule without conflicts: %v", r.Resolve)
	}
	if r := c.ruleFor("other", "x"); r.Resolve != ResolveLWW {
		t.Errorf("unmatched: %v", r.Resolve)
	}
	if siteOf("binlog/a/src") != "a" || siteOf("key/ks/t/k") != "key" {
		t.Error("siteOf")
	}
}
