package state

import (
	"errors"
	"testing"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
)

// A reference rebuilt from its table, key and ID is the handle CreateLock made.
func TestLockRefFor(t *testing.T) {
	tb := Table{Keyspace: "ks", Name: "users", Columns: []Column{{Name: "name", Type: Text}, {Name: "age", Type: Int}}, PartitionKey: []string{"name"}}
	key := journal.Row{{Name: "name", Value: journal.String("alice")}}
	made := makeRef(locks.Ref{Name: newKeyID(tb, key).lockName(), ID: "w-0123456789abcdef-0000000007"})
	got, err := LockRefFor(tb, key, made.ID())
	if err != nil || got != made {
		t.Fatalf("LockRefFor = %q, %v; want %q", got, err, made)
	}
	if made.ID() != "w-0123456789abcdef-0000000007" || LockRef("garbage").ID() != "" {
		t.Errorf("ID: %q, %q", made.ID(), LockRef("garbage").ID())
	}
	other := journal.Row{{Name: "name", Value: journal.String("bob")}}
	if r, _ := LockRefFor(tb, other, made.ID()); r == made {
		t.Errorf("another key gave the same reference %q", r)
	}
	for _, bad := range []struct {
		key journal.Row
		id  string
	}{
		{key, "a~b"},
		{key, ""},
		{journal.Row{{Name: "age", Value: journal.Int(1)}}, "w-1-1"},
	} {
		if _, err := LockRefFor(tb, bad.key, bad.id); !errors.Is(err, ErrInvalid) {
			t.Errorf("LockRefFor(%v, %q): %v, want ErrInvalid", bad.key, bad.id, err)
		}
	}
}
