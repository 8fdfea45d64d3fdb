package main

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/musicd/musicd/applier"
	"github.com/musicd/musicd/binlog"
	"github.com/musicd/musicd/feeds"
	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
	"github.com/musicd/musicd/ownership"
)

// The status view (GET /status): what a person needs at a glance to see whether a site works and
// where it lags. Everything in it is read when asked: the journal's heads, the appliers' and the
// relay's in-memory positions, and in distributed mode each election's leader from ZooKeeper.

type statusView struct {
	Site      string           `json:"site"`
	Instance  string           `json:"instance"`
	Mode      string           `json:"mode"`
	Time      time.Time        `json:"time"`
	Elections []electionStatus `json:"elections,omitempty"`
	Sources   []sourceStatus   `json:"sources"`
	Appliers  []applierStatus  `json:"appliers"`
	// Ownership is the ownership map as this instance knows it (absent without a policy).
	Ownership *ownership.View `json:"ownership,omitempty"`
	Errors    []string        `json:"errors,omitempty"` // parts that could not be read
}

type electionStatus struct {
	Name         string `json:"name"`
	Leader       string `json:"leader"` // empty: no leader now
	Epoch        uint64 `json:"epoch,omitempty"`
	ThisInstance bool   `json:"this_instance"`
}

type sourceStatus struct {
	Name   string `json:"name"`
	Stream string `json:"stream"`
	Head   uint64 `json:"head"` // last journaled seq
	GTID   string `json:"last_gtid,omitempty"`
	// JournaledAt is the hybrid-clock time of the stream's last entry.
	JournaledAt *time.Time `json:"journaled_at,omitempty"`
	// Published is the last seq this instance's relay confirmed in the change feed (absent when
	// another instance relays the stream).
	Published *uint64 `json:"published,omitempty"`
	// Snapshot is the progress of the source's initial snapshots (absent when none is left and
	// this instance has run none).
	Snapshot *binlog.SnapshotProgress `json:"snapshot,omitempty"`
}

type applierStatus struct {
	Target  string              `json:"target"`
	Streams []applierStreamView `json:"streams"`
}

type applierStreamView struct {
	Stream  string `json:"stream"`
	Local   bool   `json:"local,omitempty"`
	Applied uint64 `json:"applied"`
	Head    uint64 `json:"head"`
	Behind  uint64 `json:"behind"`
	// EntriesPerS is the apply rate over the last few seconds; ETASeconds the time left until
	// head at that rate.
	EntriesPerS float64 `json:"entries_per_s,omitempty"`
	ETASeconds  float64 `json:"eta_s,omitempty"`
	// WaitingSnapshot: the stream waits while the target's own capture snapshots a table.
	WaitingSnapshot bool   `json:"waiting_snapshot,omitempty"`
	Stopped         bool   `json:"stopped,omitempty"`
	Error           string `json:"error,omitempty"`
}

// statusSource assembles the view. observer is nil in embedded mode (no elections).
type statusSource struct {
	site, instance, mode string
	store                journal.Store
	relay                *feeds.Relay
	captures             []*binlog.Capture
	sourceNames          []string
	appliers             []*applier.Applier
	targets              []string
	elections            []string
	observer             locks.Service
	ownership            *ownership.Node
}

func (s *statusSource) status(ctx context.Context) (any, error) {
	v := statusView{Site: s.site, Instance: s.instance, Mode: s.mode, Time: time.Now().UTC(),
		Sources: []sourceStatus{}, Appliers: []applierStatus{}}
	if s.ownership != nil {
		ov := s.ownership.View()
		v.Ownership = &ov
	}
	var mu sync.Mutex
	fail := func(what string, err error) {
		mu.Lock()
		v.Errors = append(v.Errors, what+": "+err.Error())
		mu.Unlock()
	}
	var wg sync.WaitGroup
	if s.observer != nil {
		v.Elections = make([]electionStatus, len(s.elections))
		for i, name := range s.elections {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v.Elections[i] = electionStatus{Name: name}
				octx, cancel := context.WithCancel(ctx)
				defer cancel()
				ch, err := s.observer.Observe(octx, name)
				if err != nil {
					fail("election "+name, err)
					return
				}
				select {
				case l, ok := <-ch:
					if !ok {
						fail("election "+name, errors.New("observation ended"))
						return
					}
					v.Elections[i].Leader, v.Elections[i].Epoch = l.Candidate, l.Epoch
					v.Elections[i].ThisInstance = l.Candidate != "" && l.Candidate == s.instance
				case <-ctx.Done():
					fail("election "+name, ctx.Err())
				}
			}()
		}
	}
	v.Sources = make([]sourceStatus, len(s.captures))
	for i, c := range s.captures {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := sourceStatus{Name: s.sourceNames[i], Stream: c.Stream()}
			if p := c.SnapshotProgress(); len(p.Pending) > 0 || p.Chunks > 0 {
				st.Snapshot = &p
			}
			defer func() { v.Sources[i] = st }()
			h, err := s.store.Head(ctx, st.Stream)
			if err != nil {
				fail("source "+st.Name, err)
				return
			}
			st.Head = h.Seq
			if h.Seq > h.Low {
				es, err := s.store.Read(ctx, st.Stream, h.Seq, 1)
				if err != nil {
					fail("source "+st.Name, err)
				} else if len(es) == 1 {
					st.GTID = es[0].Source.GTID
					at := time.Unix(0, es[0].HLC.Wall).UTC()
					st.JournaledAt = &at
				}
			}
			if seq, ok := s.relay.Confirmed(st.Stream); ok {
				st.Published = &seq
			}
		}()
	}
	wg.Wait()
	for i, a := range s.appliers {
		as := applierStatus{Target: s.targets[i], Streams: []applierStreamView{}}
		for _, st := range a.Status() {
			sv := applierStreamView{Stream: st.Stream, Local: st.Local, Applied: st.Applied, Head: st.Head, Stopped: st.Stopped,
				WaitingSnapshot: st.WaitingSnapshot}
			if st.Head > st.Applied {
				sv.Behind = st.Head - st.Applied
			}
			sv.EntriesPerS, sv.ETASeconds = math.Round(st.Rate*10)/10, st.ETA.Seconds()
			if st.Err != nil {
				sv.Error = st.Err.Error()
			}
			as.Streams = append(as.Streams, sv)
		}
		v.Appliers = append(v.Appliers, as)
	}
	// Each election and source adds at most one error.
	if parts := len(v.Elections) + len(v.Sources); parts > 0 && len(v.Errors) == parts {
		return nil, errors.New("status: nothing could be read: " + strings.Join(v.Errors, "; "))
	}
	return v, nil
}
