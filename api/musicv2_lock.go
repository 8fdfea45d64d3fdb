package api

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
	"github.com/musicd/musicd/state"
)

// Locks of the MUSIC v2 layer.
//
// A MUSIC lock name is keyspace.table.key (the row's primary key value) and a lock id is
// $keyspace.table.key$<reference>. Here <reference> is the state service's reference ID within
// the key's lock queue (w-<16 hex>-<10 digits>, the shape of MUSIC's own ZooKeeper-era ids), so a
// lock id carries everything needed to rebuild the state.LockRef: the table (for the key's type),
// the key, and the ID (state.LockRefFor). Any daemon turns a lock id back into a reference without
// a lookup table, and a lock id issued by one daemon works on every other.

// musicRefIDRE is the shape of a reference ID in a lock id; the lock service checks the rest.
var musicRefIDRE = regexp.MustCompile(`^[a-z]-[0-9a-f]{1,64}-[0-9]{1,20}$`)

// musicLockName is a parsed MUSIC lock name.
type musicLockName struct{ ks, table, key string }

func (n musicLockName) String() string { return n.ks + "." + n.table + "." + n.key }

// parseMusicLockName splits keyspace.table.key; the key is everything after the second dot.
func parseMusicLockName(s string) (musicLockName, error) {
	ks, rest, ok1 := strings.Cut(s, ".")
	table, key, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || ks == "" || table == "" || key == "" {
		return musicLockName{}, invalid("Invalid lock. Please make sure lock is of the type keyspaceName.tableName.primaryKey (got %q)", s)
	}
	return musicLockName{ks: strings.ToLower(ks), table: strings.ToLower(table), key: key}, nil
}

// parseMusicLockID splits $keyspace.table.key$<reference>: the reference is after the last $.
func parseMusicLockID(id string) (musicLockName, string, error) {
	bad := invalid("lock id %q is not one this API issued: want $keyspace.table.key$<reference> as /locks/create returned it", id)
	i := strings.LastIndex(id, "$")
	if !strings.HasPrefix(id, "$") || i <= 0 || !musicRefIDRE.MatchString(id[i+1:]) {
		return musicLockName{}, "", bad
	}
	n, err := parseMusicLockName(id[1:i])
	if err != nil {
		return musicLockName{}, "", bad
	}
	return n, id[i+1:], nil
}

// musicLockID renders the lock id of a reference on the lock named n.
func musicLockID(n musicLockName, ref state.LockRef) string { return "$" + n.String() + "$" + ref.ID() }

// musicLockKey returns the table and the key row a lock name designates. MUSIC locks a row by
// one value, so the table's primary key must be one column.
func (s *Server) musicLockKey(ctx context.Context, n musicLockName) (state.Table, journal.Row, error) {
	t, err := s.state.Table(ctx, n.ks, n.table)
	if err != nil {
		return t, nil, err
	}
	if len(t.KeyColumns()) != 1 {
		return t, nil, invalid("table %s.%s has the composite primary key %v: a MUSIC lock names a row by one key value; lock its rows through the native API (/v1)", t.Keyspace, t.Name, t.KeyColumns())
	}
	key, err := state.ParseKey(t, []string{n.key})
	return t, key, err
}

// musicRefFromID authorizes the request on the lock id's keyspace and rebuilds its reference.
func (s *Server) musicRefFromID(ctx context.Context, c *call, id string, write bool) (state.LockRef, state.Table, error) {
	n, refID, err := parseMusicLockID(id)
	if err != nil {
		return "", state.Table{}, err
	}
	if err := c.p.authorize(n.ks, write); err != nil {
		return "", state.Table{}, err
	}
	t, key, err := s.musicLockKey(ctx, n)
	if err != nil {
		return "", t, err
	}
	ref, err := state.LockRefFor(t, key, refID)
	return ref, t, err
}

// musicLockBody is MUSIC's JsonLock.
type musicLockBody struct {
	LockType string `json:"locktype"` // READ or WRITE; the JSON name matches lockType too
}

// musicCreateLock queues a reference on a row's lock (MUSIC's createLockReference) with the
// native API's default lease; each acquire call restarts it.
func (s *Server) musicCreateLock(w http.ResponseWriter, r *http.Request, c *call) error {
	n, err := parseMusicLockName(r.PathValue("lock"))
	if err != nil {
		return err
	}
	var body musicLockBody
	if err := s.decodeMusic(w, r, &body, false); err != nil {
		return err
	}
	opts := locks.RefOptions{Type: locks.Write, Lease: defaultLockLease, Owner: r.Header.Get("owner")}
	switch strings.ToUpper(body.LockType) {
	case "", "WRITE":
	case "READ":
		opts.Type = locks.Read
	default:
		return invalid("locktype %q: want READ or WRITE", body.LockType)
	}
	if len(opts.Owner) > 256 {
		return invalid("owner: %d bytes, at most 256", len(opts.Owner))
	}
	if err := c.p.authorize(n.ks, opts.Type == locks.Write); err != nil {
		return err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	t, key, err := s.musicLockKey(ctx, n)
	if err != nil {
		return err
	}
	ref, err := s.state.CreateLock(ctx, t.Keyspace, t.Name, key, opts)
	if err != nil {
		return err
	}
	return musicOK(w, musicResponse{Lock: &musicLock{Lock: musicLockID(n, ref)}})
}

// musicTryAcquire tries once to acquire the lock id's reference, then restarts its lease (a
// waiter that keeps asking keeps its place, a holder that keeps asking keeps the lock). It
// answers MUSIC's acquire response, with lease as lock-lease when set.
func (s *Server) musicTryAcquire(w http.ResponseWriter, r *http.Request, c *call, lease string) error {
	id := r.PathValue("id")
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	ref, _, err := s.musicRefFromID(ctx, c, id, false)
	if err != nil {
		return err
	}
	_, err = s.state.AcquireLock(ctx, ref, 0)
	if err != nil && !errors.Is(err, state.ErrLocked) {
		return err
	}
	if rerr := s.state.RenewLock(ctx, ref); rerr != nil {
		return rerr
	}
	lk := &musicLock{Lock: id, Lease: lease}
	if err != nil {
		msg := id + " is not a lock holder"
		writeJSON(w, http.StatusBadRequest, musicResponse{Status: musicFailure, Message: msg, Error: msg, Lock: lk})
		return nil
	}
	return musicOK(w, musicResponse{Message: ref.ID() + " is the lock holder for the key", Lock: lk})
}

func (s *Server) musicAcquire(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.musicTryAcquire(w, r, c, "")
}

// musicLeaseBody is MUSIC's JsonLeasedLock: the lease in milliseconds.
type musicLeaseBody struct {
	LeasePeriod *int64 `json:"leasePeriod"`
}

// musicAcquireWithLease is acquire with MUSIC's leasePeriod, which is checked and echoed; the
// reference keeps the lease it was created with (see docs/music-v2.md).
func (s *Server) musicAcquireWithLease(w http.ResponseWriter, r *http.Request, c *call) error {
	var body musicLeaseBody
	if err := s.decodeMusic(w, r, &body, true); err != nil {
		return err
	}
	if body.LeasePeriod == nil || *body.LeasePeriod < 1 || time.Duration(*body.LeasePeriod)*time.Millisecond > locks.MaxLease {
		return invalid("leasePeriod: want milliseconds from 1 to %d", locks.MaxLease.Milliseconds())
	}
	return s.musicTryAcquire(w, r, c, strconv.FormatInt(*body.LeasePeriod, 10))
}

// musicLockHolders returns the lock name of the path and its holders' lock ids.
func (s *Server) musicLockHolders(r *http.Request, c *call) (musicLockName, []string, error) {
	n, err := parseMusicLockName(r.PathValue("lock"))
	if err != nil {
		return n, nil, err
	}
	if err := c.p.authorize(n.ks, false); err != nil {
		return n, nil, err
	}
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	t, key, err := s.musicLockKey(ctx, n)
	if err != nil {
		return n, nil, err
	}
	hs, err := s.state.LockHolders(ctx, t.Keyspace, t.Name, key)
	if err != nil {
		return n, nil, err
	}
	ids := make([]string, len(hs))
	for i, h := range hs {
		ids[i] = musicLockID(n, h.Ref)
	}
	return n, ids, nil
}

// musicEnquire names the lock's (first) holder.
func (s *Server) musicEnquire(w http.ResponseWriter, r *http.Request, c *call) error {
	n, ids, err := s.musicLockHolders(r, c)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		writeJSON(w, http.StatusBadRequest, musicResponse{Status: musicFailure, Error: "no one holds the lock " + n.String(), Lock: &musicLock{Lock: n.String()}})
		return nil
	}
	return musicOK(w, musicResponse{Lock: &musicLock{Lock: n.String(), Holder: ids[0]}})
}

// musicHolders lists the lock's holders (several read references, or one write reference).
func (s *Server) musicHolders(w http.ResponseWriter, r *http.Request, c *call) error {
	n, ids, err := s.musicLockHolders(r, c)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		writeJSON(w, http.StatusBadRequest, musicResponse{Status: musicFailure, Error: "No lock holders for the key", Lock: &musicLock{Lock: n.String()}})
		return nil
	}
	return musicOK(w, musicResponse{Lock: &musicLock{Lock: n.String(), Holder: ids}})
}

// musicRelease releases a reference (leaves the queue, cleanly). A reference already gone
// (released, expired, forced out) is reported UNLOCKED, as MUSIC does.
func (s *Server) musicRelease(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	ref, _, err := s.musicRefFromID(ctx, c, id, false)
	if err != nil {
		return err
	}
	if err := s.state.ReleaseLock(ctx, ref); err != nil && !errors.Is(err, state.ErrNotFound) {
		return err
	}
	return musicOK(w, musicResponse{Lock: &musicLock{Lock: id, Status: "UNLOCKED"}})
}

// musicDeleteLock serves MUSIC's deprecated delete: with a lock id it forces that reference
// out; with a lock name, every current holder. A forced release is unclean: the next holder
// first brings the key up to date.
func (s *Server) musicDeleteLock(w http.ResponseWriter, r *http.Request, c *call) error {
	arg := r.PathValue("lock")
	ctx, cancel := s.opContext(r, 0, true)
	defer cancel()
	var refs []state.LockRef
	if strings.HasPrefix(arg, "$") {
		ref, _, err := s.musicRefFromID(ctx, c, arg, true)
		if err != nil {
			return err
		}
		refs = append(refs, ref)
	} else {
		n, err := parseMusicLockName(arg)
		if err != nil {
			return err
		}
		if err := c.p.authorize(n.ks, true); err != nil {
			return err
		}
		t, key, err := s.musicLockKey(ctx, n)
		if err != nil {
			return err
		}
		hs, err := s.state.LockHolders(ctx, t.Keyspace, t.Name, key)
		if err != nil {
			return err
		}
		for _, h := range hs {
			refs = append(refs, h.Ref)
		}
	}
	for _, ref := range refs {
		if err := s.state.ForceRelease(ctx, ref); err != nil && !errors.Is(err, state.ErrNotFound) {
			return err
		}
	}
	return musicOK(w, musicResponse{})
}
