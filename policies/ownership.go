package policies

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/musicd/musicd/journal"
)

// Ownership is the ownership policy (the prom recipe): which rows form which partitions, where each
// partition is owned, and when a site counts as lost. Each partition has one owner site at a time.
//
// A partition set groups tables (exact "database.table" names) and cuts their rows into
// partitions in one of three ways:
//   - whole: the tables are one partition, named after the set;
//   - hash: a hash of the key columns' values into Buckets partitions, "<set>/<bucket>";
//   - prefix: the text of one key column by the longest listed prefix it starts with,
//     "<set>/<prefix>", and "<set>/*" for keys that start with none.
//
// Placement says which live site owns each partition of a set: the first live site of an order
// (preferred), one site only (pinned: never moves), or the partitions spread evenly over the live
// sites (spread: at most one partition more on one site than on another, and a site's loss moves
// only the partitions it owned). Moves (a partition to a site) and drains (a site takes no
// partition) are overrides on top, from configuration or the REST API.
type Ownership struct {
	// Sites are every site of the deployment.
	Sites []string `yaml:"sites"`
	// FailoverGrace is how long none of a site's musicd instances must be alive in ZooKeeper before
	// the site counts as lost and its partitions move. Default 10s.
	FailoverGrace time.Duration `yaml:"failover_grace"`
	// Partitions are the partition sets.
	Partitions []PartitionSet `yaml:"partitions"`
	// Moves pin partitions to sites (a manual move); Drained sites own no partition (a drain).
	Moves   map[string]string `yaml:"moves"`
	Drained []string          `yaml:"drained"`
}

// PartitionSet is a set of tables cut into partitions the same way and placed the same way.
type PartitionSet struct {
	// Name names the set's partitions: Name itself (whole), Name/<bucket> (hash) or
	// Name/<prefix> and Name/* (prefix).
	Name string `yaml:"name"`
	// Tables are exact "database.table" names; a table belongs to at most one set.
	Tables []string `yaml:"tables"`
	// Hash and Prefix choose how rows map to partitions; neither: the tables are one partition.
	Hash   *HashPartitioning   `yaml:"hash"`
	Prefix *PrefixPartitioning `yaml:"prefix"`
	// Placement is where the set's partitions are owned.
	Placement Placement `yaml:"placement"`
}

// HashPartitioning cuts rows by a hash of the values of key columns into Buckets partitions.
type HashPartitioning struct {
	Columns []string `yaml:"columns"`
	Buckets int      `yaml:"buckets"`
}

// PrefixPartitioning cuts rows by the text of a key column: the longest of Prefixes it starts
// with names its partition.
type PrefixPartitioning struct {
	Column   string   `yaml:"column"`
	Prefixes []string `yaml:"prefixes"`
}

// Placement modes.
const (
	PlacePreferred = "preferred" // the first live site of Sites
	PlaceSpread    = "spread"    // evenly over the live sites of Sites (all sites if empty)
	PlacePinned    = "pinned"    // Sites[0], live or not: the partitions never fail over
)

// Placement is where a set's partitions are owned.
type Placement struct {
	Mode  string   `yaml:"mode"`
	Sites []string `yaml:"sites"`
}

// Bounds of a policy (invariant 7).
const (
	MaxBuckets    = 4096
	MaxPartitions = 65536 // over all sets
)

var (
	partNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)
	ownSiteRe  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
)

// WithDefaults fills what is left empty.
func (o Ownership) WithDefaults() Ownership {
	if o.FailoverGrace == 0 {
		o.FailoverGrace = 10 * time.Second
	}
	return o
}

// Validate reports the first problem, named by its YAML path: an unknown or repeated site, an
// invalid or repeated name, a table in two sets, an overlapping prefix, a move of a partition
// that does not exist. An invalid policy must change nothing: callers validate before they apply.
func (o Ownership) Validate() error {
	sites := map[string]bool{}
	for i, s := range o.Sites {
		if !ownSiteRe.MatchString(s) {
			return fmt.Errorf("sites[%d]: %q must be 1-64 of a-z, 0-9, _ and -", i, s)
		}
		if sites[s] {
			return fmt.Errorf("sites[%d]: %q listed twice", i, s)
		}
		sites[s] = true
	}
	if len(o.Partitions) > 0 && len(o.Sites) == 0 {
		return fmt.Errorf("sites: at least one site is needed to own partitions")
	}
	if o.FailoverGrace < 0 {
		return fmt.Errorf("failover_grace: %s is negative", o.FailoverGrace)
	}
	names, tables := map[string]int{}, map[string]int{}
	total := 0
	for i, p := range o.Partitions {
		at := fmt.Sprintf("partitions[%d]", i)
		if !partNameRe.MatchString(p.Name) {
			return fmt.Errorf("%s.name: %q must be 1-64 of a-z, 0-9, _, . and -", at, p.Name)
		}
		if j, dup := names[p.Name]; dup {
			return fmt.Errorf("%s.name: %q is also partitions[%d]", at, p.Name, j)
		}
		names[p.Name] = i
		if len(p.Tables) == 0 {
			return fmt.Errorf("%s.tables: at least one table", at)
		}
		for k, t := range p.Tables {
			db, tb, ok := strings.Cut(t, ".")
			if !ok || db == "" || tb == "" || strings.ContainsAny(t, "*?[]") {
				return fmt.Errorf("%s.tables[%d]: %q is not an exact \"database.table\"", at, k, t)
			}
			if j, dup := tables[t]; dup {
				return fmt.Errorf("%s.tables[%d]: %s is in partitions[%d] too (overlapping partitions)", at, k, t, j)
			}
			tables[t] = i
		}
		switch {
		case p.Hash != nil && p.Prefix != nil:
			return fmt.Errorf("%s: hash and prefix are exclusive", at)
		case p.Hash != nil:
			if len(p.Hash.Columns) == 0 {
				return fmt.Errorf("%s.hash.columns: at least one key column", at)
			}
			if p.Hash.Buckets < 1 || p.Hash.Buckets > MaxBuckets {
				return fmt.Errorf("%s.hash.buckets: %d is not in 1..%d", at, p.Hash.Buckets, MaxBuckets)
			}
		case p.Prefix != nil:
			if p.Prefix.Column == "" {
				return fmt.Errorf("%s.prefix.column: a key column is needed", at)
			}
			if len(p.Prefix.Prefixes) == 0 {
				return fmt.Errorf("%s.prefix.prefixes: at least one prefix", at)
			}
			for k, x := range p.Prefix.Prefixes {
				if x == "" || x == "*" || strings.ContainsAny(x, "/\x00") || len(x) > 64 {
					return fmt.Errorf("%s.prefix.prefixes[%d]: %q must be 1-64 bytes, not \"*\", without '/'", at, k, x)
				}
				if j := slices.Index(p.Prefix.Prefixes, x); j < k {
					return fmt.Errorf("%s.prefix.prefixes[%d]: %q is also prefixes[%d] (overlapping partitions)", at, k, x, j)
				}
			}
		}
		total += len(p.ids())
		if total > MaxPartitions {
			return fmt.Errorf("%s: more than %d partitions in all", at, MaxPartitions)
		}
		switch p.Placement.Mode {
		case PlacePreferred, PlacePinned:
			if len(p.Placement.Sites) == 0 {
				return fmt.Errorf("%s.placement.sites: %s placement needs sites", at, p.Placement.Mode)
			}
			if p.Placement.Mode == PlacePinned && len(p.Placement.Sites) != 1 {
				return fmt.Errorf("%s.placement.sites: pinned placement names one site", at)
			}
		case PlaceSpread:
		default:
			return fmt.Errorf("%s.placement.mode: %q is not preferred, spread or pinned", at, p.Placement.Mode)
		}
		seen := map[string]bool{}
		for k, s := range p.Placement.Sites {
			if !sites[s] {
				return fmt.Errorf("%s.placement.sites[%d]: unknown site %q", at, k, s)
			}
			if seen[s] {
				return fmt.Errorf("%s.placement.sites[%d]: %q listed twice", at, k, s)
			}
			seen[s] = true
		}
	}
	ids := o.partitionIDs()
	for _, part := range sortedKeys(o.Moves) {
		site := o.Moves[part]
		if _, ok := ids[part]; !ok {
			return fmt.Errorf("moves: partition %q does not exist", part)
		}
		if !sites[site] {
			return fmt.Errorf("moves[%s]: unknown site %q", part, site)
		}
	}
	for i, s := range o.Drained {
		if !sites[s] {
			return fmt.Errorf("drained[%d]: unknown site %q", i, s)
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// ids lists the set's partitions.
func (p PartitionSet) ids() []string {
	switch {
	case p.Hash != nil:
		out := make([]string, p.Hash.Buckets)
		for b := range out {
			out[b] = p.Name + "/" + strconv.Itoa(b)
		}
		return out
	case p.Prefix != nil:
		out := make([]string, 0, len(p.Prefix.Prefixes)+1)
		for _, x := range p.Prefix.Prefixes {
			out = append(out, p.Name+"/"+x)
		}
		return append(out, p.Name+"/*")
	}
	return []string{p.Name}
}

// partitionIDs maps every partition to its set's index.
func (o Ownership) partitionIDs() map[string]int {
	out := map[string]int{}
	for i, p := range o.Partitions {
		for _, id := range p.ids() {
			out[id] = i
		}
	}
	return out
}

// PartitionIDs lists every partition of the policy, set by set, in order.
func (o Ownership) PartitionIDs() []string {
	var out []string
	for _, p := range o.Partitions {
		out = append(out, p.ids()...)
	}
	return out
}

// PartitionOf returns the partition of a row of database.table with primary key key (every key
// column, named), and false if the table is in no partition set. Every site computes the same
// partition for the same key: the hash is over a canonical encoding of the values, integers by
// value whatever their signedness.
func (o Ownership) PartitionOf(database, table string, key journal.Row) (string, bool, error) {
	name := database + "." + table
	for _, p := range o.Partitions {
		if !slices.Contains(p.Tables, name) {
			continue
		}
		switch {
		case p.Hash != nil:
			h := sha256.New()
			for _, c := range p.Hash.Columns {
				v, ok := field(key, c)
				if !ok {
					return "", false, fmt.Errorf("policies: partition set %s hashes column %s, which the key of %s lacks", p.Name, c, name)
				}
				h.Write(v.AppendCanonical(nil))
			}
			sum := h.Sum(nil)
			b := binary.BigEndian.Uint64(sum[:8]) % uint64(p.Hash.Buckets)
			return p.Name + "/" + strconv.FormatUint(b, 10), true, nil
		case p.Prefix != nil:
			v, ok := field(key, p.Prefix.Column)
			if !ok {
				return "", false, fmt.Errorf("policies: partition set %s reads column %s, which the key of %s lacks", p.Name, p.Prefix.Column, name)
			}
			text := v.Str
			switch v.Kind {
			case journal.KindBytes:
				text = string(v.Bytes)
			case journal.KindInt:
				text = strconv.FormatInt(v.Int, 10)
			case journal.KindUint, journal.KindBool:
				text = strconv.FormatUint(v.Uint, 10)
			}
			best := ""
			for _, x := range p.Prefix.Prefixes {
				if strings.HasPrefix(text, x) && len(x) > len(best) {
					best = x
				}
			}
			if best == "" {
				best = "*"
			}
			return p.Name + "/" + best, true, nil
		}
		return p.Name, true, nil
	}
	return "", false, nil
}

func field(r journal.Row, name string) (journal.Value, bool) {
	for _, f := range r {
		if f.Name == name {
			return f.Value, true
		}
	}
	return journal.Value{}, false
}

// Assign computes the owner of every partition given the sites that are live (not lost), with
// the policy's moves and drains applied. A partition with no owner (its pinned site lost, or no
// live undrained site among its placement's) is absent from the result. The result depends only
// on the policy and the set of live sites, so every musicd computes the same map.
func (o Ownership) Assign(live []string) map[string]string {
	up := map[string]bool{}
	for _, s := range live {
		up[s] = true
	}
	drained := map[string]bool{}
	for _, s := range o.Drained {
		drained[s] = true
	}
	usable := func(s string) bool { return up[s] && !drained[s] }
	out := map[string]string{}
	for _, p := range o.Partitions {
		candidates := p.Placement.Sites
		if p.Placement.Mode == PlaceSpread && len(candidates) == 0 {
			candidates = o.Sites
		}
		switch p.Placement.Mode {
		case PlacePinned:
			if s := candidates[0]; usable(s) {
				for _, id := range p.ids() {
					out[id] = s
				}
			}
		case PlacePreferred:
			for _, s := range candidates {
				if usable(s) {
					for _, id := range p.ids() {
						out[id] = s
					}
					break
				}
			}
		case PlaceSpread:
			var sites []string
			for _, s := range candidates {
				if usable(s) {
					sites = append(sites, s)
				}
			}
			for id, s := range spread(p.ids(), sites) {
				out[id] = s
			}
		}
	}
	// Manual moves win over placement, to a live site that is not drained.
	for id, s := range o.Moves {
		if usable(s) {
			out[id] = s
		}
	}
	return out
}

// spread places partitions evenly over sites: each site holds the partition count divided by the
// site count, rounded down or up (the remainder going to the sites that claim it first). Each
// partition goes to the site that ranks it highest (rendezvous hashing) among those with room,
// partitions taken in the order of their best rank, so that a partition's first choice holds when
// it can: a lost site's partitions move and, where the shares allow, the others stay.
func spread(ids, sites []string) map[string]string {
	out := map[string]string{}
	if len(sites) == 0 {
		return out
	}
	base, extra := len(ids)/len(sites), len(ids)%len(sites)
	type choice struct {
		id    string
		ranks []string // sites, best first
		top   uint64
	}
	choices := make([]choice, len(ids))
	for i, id := range ids {
		ranks := slices.Clone(sites)
		score := func(s string) uint64 {
			sum := sha256.Sum256([]byte(id + "\x00" + s))
			return binary.BigEndian.Uint64(sum[:8])
		}
		sort.Slice(ranks, func(a, b int) bool {
			sa, sb := score(ranks[a]), score(ranks[b])
			if sa != sb {
				return sa > sb
			}
			return ranks[a] < ranks[b]
		})
		choices[i] = choice{id: id, ranks: ranks, top: score(ranks[0])}
	}
	sort.Slice(choices, func(a, b int) bool {
		if choices[a].top != choices[b].top {
			return choices[a].top > choices[b].top
		}
		return choices[a].id < choices[b].id
	})
	load := map[string]int{}
	for _, c := range choices {
		for _, s := range c.ranks {
			if load[s] < base || load[s] == base && extra > 0 {
				if load[s] == base {
					extra--
				}
				out[c.id] = s
				load[s]++
				break
			}
		}
	}
	return out
}
