package ownership

import (
	"github.com/musicd/musicd/journal"
)

// Misrouted is a row captured from a site's database while another site owns its partition
// (an application writing to the wrong site). It is reported as a conflict; the row itself is
// mirrored like any other and meets the owner's rows under the table's conflict rule at every
// applier.
type Misrouted struct {
	Kind      string            `json:"kind"` // always "misrouted"
	Partition string            `json:"partition"`
	Site      string            `json:"site"`            // where it was written and captured
	Owner     string            `json:"owner,omitempty"` // the owner site then (empty: none)
	Stream    string            `json:"stream"`
	Seq       uint64            `json:"seq"`
	GTID      string            `json:"gtid,omitempty"`
	Database  string            `json:"database"`
	Table     string            `json:"table"`
	Op        string            `json:"op"`
	HLC       journal.Timestamp `json:"hlc"`
	Key       map[string]any    `json:"key"`
}

// Misrouted returns the row entries of es (journaled in stream by this site's capture) whose partition
// this site neither owns nor is meant to own, and counts them in
// music_ownership_misrouted_rows_total.
func (n *Node) Misrouted(stream string, es []journal.Entry) []Misrouted {
	var out []Misrouted
	for i := range es {
		e := &es[i]
		switch e.Op {
		case journal.OpInsert, journal.OpUpdate, journal.OpDelete:
		default:
			continue
		}
		if !n.tables[e.Database+"."+e.Table] {
			continue
		}
		r, err := n.Route(e.Database, e.Table, e.Key)
		if err != nil || !r.Partitioned {
			continue
		}
		owner := r.Desired
		if r.Owner != nil {
			owner = r.Owner.Site
		}
		if owner == n.cfg.Site || r.Desired == n.cfg.Site {
			continue
		}
		n.metrics.misrouted.WithLabelValues(r.Partition).Inc()
		out = append(out, Misrouted{Kind: "misrouted", Partition: r.Partition, Site: n.cfg.Site, Owner: owner,
			Stream: stream, Seq: e.Seq, GTID: e.Source.GTID, Database: e.Database, Table: e.Table, Op: e.Op.String(),
			HLC: e.HLC, Key: e.Key.Map()})
	}
	return out
}
