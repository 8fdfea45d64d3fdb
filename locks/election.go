package locks

import (
	"context"
	"fmt"
	"time"
)

// Leadership is a won election: the write grant of the election's lock, with no lease (it lasts
// until Resign, the service's Close, or the loss of its ZooKeeper session).
type Leadership struct {
	Election  string
	Candidate string
	// Epoch is the grant's fencing token: strictly increasing from leader to leader. A singleton
	// stamps its writes with it (DESIGN.md: epoch).
	Epoch uint64
	// PreviousUnclean: the previous leader did not resign (it crashed or lost its session).
	PreviousUnclean bool

	grant *Grant
	svc   spaced
}

// Lost is closed when the leadership is lost (session loss, forced release) without Resign.
func (l *Leadership) Lost() <-chan struct{} { return l.grant.Lost() }

// Resign gives the leadership up; the next candidate in line becomes leader.
// Errors: as Service.Release.
func (l *Leadership) Resign(ctx context.Context) error {
	return l.svc.release(ctx, l.grant.Ref)
}

// spaced is what elections need from an implementation: the lock primitives in the elections
// name space, and the service's goroutine owner.
type spaced interface {
	createRef(ctx context.Context, sp space, name string, opts RefOptions) (Ref, error)
	acquire(ctx context.Context, ref Ref, block bool) (*Grant, error)
	release(ctx context.Context, ref Ref) error
	watch(ctx context.Context, sp space, name string) (<-chan []Holder, error)
	// goroutine runs f on a goroutine the service waits for on Close; false after Close.
	goroutine(f func()) bool
}

// withdrawTimeout bounds the removal of a candidate whose campaign failed.
const withdrawTimeout = 5 * time.Second

func campaign(ctx context.Context, s spaced, election, candidate string) (*Leadership, error) {
	if err := ValidateName(election); err != nil {
		return nil, fmt.Errorf("campaign: %w", err)
	}
	ref, err := s.createRef(ctx, spaceElections, election, RefOptions{Type: Write, Owner: candidate})
	if err != nil {
		return nil, fmt.Errorf("campaign %s: %w", election, err)
	}
	g, err := s.acquire(ctx, ref, true)
	if err != nil {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), withdrawTimeout)
		defer cancel()
		_ = s.release(wctx, ref) // best effort: a leftover candidate goes with the session
		return nil, fmt.Errorf("campaign %s: %w", election, err)
	}
	return &Leadership{Election: election, Candidate: candidate, Epoch: g.Token,
		PreviousUnclean: g.PreviousUnclean, grant: g, svc: s}, nil
}

func observe(ctx context.Context, s spaced, election string) (<-chan Leader, error) {
	if err := ValidateName(election); err != nil {
		return nil, fmt.Errorf("observe: %w", err)
	}
	hs, err := s.watch(ctx, spaceElections, election)
	if err != nil {
		return nil, fmt.Errorf("observe %s: %w", election, err)
	}
	out := make(chan Leader, 1)
	if !s.goroutine(func() { // ends when hs closes (ctx ended or the service closed)
		defer close(out)
		for h := range hs {
			var l Leader
			if len(h) > 0 {
				l = Leader{Candidate: h[0].Owner, Epoch: h[0].Token}
			}
			sendLatest(out, l)
		}
	}) {
		return nil, fmt.Errorf("observe %s: %w", election, ErrClosed)
	}
	return out, nil
}

// sendLatest puts v in ch (capacity 1), replacing a value the reader has not taken yet. Only one
// goroutine may send on ch.
func sendLatest[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
			select {
			case <-ch:
			default:
			}
		}
	}
}
