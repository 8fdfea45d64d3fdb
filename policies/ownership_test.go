package policies

import (
	"fmt"
	"maps"
	"strings"
	"testing"

	"github.com/musicd/musicd/journal"
)

func testOwnership() Ownership {
	return Ownership{
		Sites: []string{"a", "b", "c"},
		Partitions: []PartitionSet{
			{Name: "orders", Tables: []string{"shop.orders", "shop.order_lines"}, Hash: &HashPartitioning{Columns: []string{"order_id"}, Buckets: 64},
				Placement: Placement{Mode: PlaceSpread}},
			{Name: "tenants", Tables: []string{"crm.accounts"}, Prefix: &PrefixPartitioning{Column: "tenant", Prefixes: []string{"eu-", "eu-west-", "us-"}},
				Placement: Placement{Mode: PlacePreferred, Sites: []string{"b", "a"}}},
			{Name: "config", Tables: []string{"ops.settings"}, Placement: Placement{Mode: PlacePinned, Sites: []string{"c"}}},
		},
	}.WithDefaults()
}

func TestOwnershipValidate(t *testing.T) {
	if err := testOwnership().Validate(); err != nil {
		t.Fatal(err)
	}
	for want, mod := range map[string]func(o *Ownership){
		"sites[1]: \"a\" listed twice":        func(o *Ownership) { o.Sites = []string{"a", "a"} },
		"sites[0]: \"A\" must":                func(o *Ownership) { o.Sites[0] = "A" },
		"sites: at least one":                 func(o *Ownership) { o.Sites = nil },
		"failover_grace:":                     func(o *Ownership) { o.FailoverGrace = -1 },
		"partitions[1].name: \"orders\" is":   func(o *Ownership) { o.Partitions[1].Name = "orders" },
		"partitions[0].name: \"Or ders\"":     func(o *Ownership) { o.Partitions[0].Name = "Or ders" },
		"partitions[0].tables: at least":      func(o *Ownership) { o.Partitions[0].Tables = nil },
		"partitions[0].tables[0]: \"shop.*\"": func(o *Ownership) { o.Partitions[0].Tables[0] = "shop.*" },
		"partitions[1].tables[0]: shop.orders is in partitions[0] too (overlapping partitions)": func(o *Ownership) {
			o.Partitions[1].Tables = []string{"shop.orders"}
		},
		"partitions[0]: hash and prefix":          func(o *Ownership) { o.Partitions[0].Prefix = &PrefixPartitioning{Column: "x", Prefixes: []string{"p"}} },
		"partitions[0].hash.columns":              func(o *Ownership) { o.Partitions[0].Hash.Columns = nil },
		"partitions[0].hash.buckets: 0":           func(o *Ownership) { o.Partitions[0].Hash.Buckets = 0 },
		"partitions[0].hash.buckets: 5000":        func(o *Ownership) { o.Partitions[0].Hash.Buckets = 5000 },
		"partitions[1].prefix.column":             func(o *Ownership) { o.Partitions[1].Prefix.Column = "" },
		"partitions[1].prefix.prefixes: at":       func(o *Ownership) { o.Partitions[1].Prefix.Prefixes = nil },
		"partitions[1].prefix.prefixes[1]: \"*\"": func(o *Ownership) { o.Partitions[1].Prefix.Prefixes[1] = "*" },
		"partitions[1].prefix.prefixes[2]: \"eu-\" is also prefixes[0] (overlapping partitions)": func(o *Ownership) {
			o.Partitions[1].Prefix.Prefixes[2] = "eu-"
		},
		"partitions[1].placement.sites[1]: unknown site \"x\"": func(o *Ownership) { o.Partitions[1].Placement.Sites[1] = "x" },
		"partitions[1].placement.sites[1]: \"b\" listed":       func(o *Ownership) { o.Partitions[1].Placement.Sites[1] = "b" },
		"partitions[1].placement.sites: preferred":             func(o *Ownership) { o.Partitions[1].Placement.Sites = nil },
		"partitions[2].placement.sites: pinned placement names one site": func(o *Ownership) {
			o.Partitions[2].Placement.Sites = []string{"a", "c"}
		},
		"partitions[0].placement.mode: \"nearest\"":       func(o *Ownership) { o.Partitions[0].Placement.Mode = "nearest" },
		"moves: partition \"orders/64\" does not exist":   func(o *Ownership) { o.Moves = map[string]string{"orders/64": "a"} },
		"moves: partition \"tenants/ap-\" does not exist": func(o *Ownership) { o.Moves = map[string]string{"tenants/ap-": "a"} },
		"moves[orders/3]: unknown site \"z\"":             func(o *Ownership) { o.Moves = map[string]string{"orders/3": "z"} },
		"drained[0]: unknown site \"z\"":                  func(o *Ownership) { o.Drained = []string{"z"} },
		"partitions[0]: more than 65536 partitions in all": func(o *Ownership) {
			for i := range 20 {
				o.Partitions = append([]PartitionSet{{Name: fmt.Sprint("big", i), Tables: []string{fmt.Sprint("big.t", i)},
					Hash: &HashPartitioning{Columns: []string{"k"}, Buckets: MaxBuckets}, Placement: Placement{Mode: PlaceSpread}}}, o.Partitions...)
			}
		},
	} {
		o := testOwnership()
		// Each case gets its own copies of what it changes.
		o.Sites = append([]string(nil), o.Sites...)
		o.Partitions = append([]PartitionSet(nil), o.Partitions...)
		for i := range o.Partitions {
			p := &o.Partitions[i]
			p.Tables = append([]string(nil), p.Tables...)
			p.Placement.Sites = append([]string(nil), p.Placement.Sites...)
			if p.Hash != nil {
				h := *p.Hash
				p.Hash = &h
			}
			if p.Prefix != nil {
				x := *p.Prefix
				x.Prefixes = append([]string(nil), x.Prefixes...)
				p.Prefix = &x
			}
		}
		mod(&o)
		err := o.Validate()
		if want == "partitions[0]: more than 65536 partitions in all" {
			want = "partitions[16]: more than 65536 partitions in all" // 16 full sets fit, the 17th does not
		}
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("want %q, got %v", want, err)
		}
	}
}

func TestPartitionOf(t *testing.T) {
	o := testOwnership()
	id := func(v journal.Value) journal.Row {
		return journal.Row{{Name: "order_id", Value: v}, {Name: "line", Value: journal.Int(1)}}
	}
	p1, ok, err := o.PartitionOf("shop", "orders", id(journal.Int(42)))
	if err != nil || !ok || !strings.HasPrefix(p1, "orders/") {
		t.Fatalf("PartitionOf = %q %v %v", p1, ok, err)
	}
	// The same key value typed differently by another site, and another table of the set.
	if p2, _, _ := o.PartitionOf("shop", "order_lines", id(journal.Uint(42))); p2 != p1 {
		t.Errorf("unsigned 42 in order_lines: %s, signed 42 in orders: %s", p2, p1)
	}
	buckets := map[string]int{}
	for k := range 6400 {
		p, _, _ := o.PartitionOf("shop", "orders", id(journal.Int(int64(k))))
		buckets[p]++
	}
	if len(buckets) != 64 {
		t.Errorf("6400 keys fell in %d of 64 buckets", len(buckets))
	}
	for p, n := range buckets {
		if n < 50 || n > 150 {
			t.Errorf("bucket %s holds %d of 6400 keys", p, n)
		}
	}
	if _, _, err := o.PartitionOf("shop", "orders", journal.Row{{Name: "other", Value: journal.Int(1)}}); err == nil {
		t.Error("a key without the hashed column: no error")
	}
	tenant := func(s string) string {
		p, _, err := o.PartitionOf("crm", "accounts", journal.Row{{Name: "tenant", Value: journal.String(s)}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for key, want := range map[string]string{"eu-north-1": "tenants/eu-", "eu-west-7": "tenants/eu-west-", "us-1": "tenants/us-", "ap-1": "tenants/*"} {
		if got := tenant(key); got != want {
			t.Errorf("tenant %s: %s, want %s", key, got, want)
		}
	}
	if p, ok, _ := o.PartitionOf("ops", "settings", journal.Row{{Name: "k", Value: journal.String("x")}}); !ok || p != "config" {
		t.Errorf("whole table: %s %v", p, ok)
	}
	if _, ok, _ := o.PartitionOf("shop", "other", nil); ok {
		t.Error("a table in no set has a partition")
	}
}

func TestAssign(t *testing.T) {
	o := testOwnership()
	all := o.Assign([]string{"c", "a", "b"})
	if len(all) != len(o.PartitionIDs()) {
		t.Fatalf("%d of %d partitions owned with every site live", len(all), len(o.PartitionIDs()))
	}
	if !maps.Equal(all, o.Assign([]string{"a", "b", "c"})) {
		t.Error("the map depends on the order of the live sites")
	}
	count := func(m map[string]string, set string) map[string]int {
		out := map[string]int{}
		for id, s := range m {
			if strings.HasPrefix(id, set+"/") {
				out[s]++
			}
		}
		return out
	}
	if n := count(all, "orders"); n["a"]+n["b"]+n["c"] != 64 || n["a"] < 21 || n["b"] < 21 || n["c"] < 21 {
		t.Errorf("64 buckets spread over 3 sites: %v", n)
	}
	if all["tenants/eu-"] != "b" || all["tenants/*"] != "b" || all["config"] != "c" {
		t.Errorf("preferred and pinned with all sites live: %v %v %v", all["tenants/eu-"], all["tenants/*"], all["config"])
	}

	// b is lost: its preferred partitions go to a; its buckets to a and c, evenly; a's and c's
	// buckets stay where their shares allow.
	noB := o.Assign([]string{"a", "c"})
	if n := count(noB, "orders"); n["a"]+n["c"] != 64 || n["a"] != 32 || n["c"] != 32 || n["b"] != 0 {
		t.Errorf("64 buckets over a and c: %v", n)
	}
	if noB["tenants/us-"] != "a" {
		t.Errorf("preferred placement after b's loss: %s", noB["tenants/us-"])
	}
	stayed, survivors := 0, 0
	for id, s := range all {
		if strings.HasPrefix(id, "orders/") && s != "b" {
			survivors++
			if noB[id] == s {
				stayed++
			}
		}
	}
	t.Logf("after b's loss, %d of the %d buckets of a and c stayed", stayed, survivors)
	if stayed < survivors*3/4 {
		t.Errorf("only %d of %d buckets of the surviving sites stayed", stayed, survivors)
	}
	// c is lost: the pinned partition has no owner.
	if s, ok := o.Assign([]string{"a", "b"})["config"]; ok {
		t.Errorf("pinned partition of a lost site owned by %s", s)
	}
	// Spread stays even for other counts.
	for _, n := range []int{1, 2, 5, 7, 10, 100, 101} {
		for k := 1; k <= 4; k++ {
			var ids, sites []string
			for i := range n {
				ids = append(ids, fmt.Sprint("p/", i))
			}
			for i := range k {
				sites = append(sites, fmt.Sprint("s", i))
			}
			load := map[string]int{}
			m := spread(ids, sites)
			for _, s := range m {
				load[s]++
			}
			lo, hi := n, 0
			for _, s := range sites {
				lo, hi = min(lo, load[s]), max(hi, load[s])
			}
			if len(m) != n || hi-lo > 1 {
				t.Errorf("%d partitions over %d sites: %d placed, loads %v", n, k, len(m), load)
			}
		}
	}

	// Moves and drains.
	o.Moves = map[string]string{"orders/5": "c", "config": "a"}
	o.Drained = []string{"b"}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	m := o.Assign([]string{"a", "b", "c"})
	if m["orders/5"] != "c" || m["config"] != "a" || m["tenants/eu-"] != "a" {
		t.Errorf("moves and drain: orders/5 %s, config %s, tenants/eu- %s", m["orders/5"], m["config"], m["tenants/eu-"])
	}
	if n := count(m, "orders"); n["b"] != 0 {
		t.Errorf("a drained site owns %d buckets", n["b"])
	}
	// A move to a lost site does not take effect.
	if s := o.Assign([]string{"a", "b"})["orders/5"]; s == "c" {
		t.Error("a partition moved to a lost site")
	}
}
