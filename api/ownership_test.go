package api

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/ownership"
)

// fakeOwnership routes ks.users rows by name: alice's partition is owned by site b, bob's is
// served here, carol's is being taken over here, dave's has no owner; other tables are not
// partitioned.
type fakeOwnership struct {
	mu    sync.Mutex
	moves []string
}

func (f *fakeOwnership) View() ownership.View {
	return ownership.View{Site: "a", Instance: "a-1", Present: true, Version: 7, Live: []string{"a", "b"}, Sites: []string{"a", "b"},
		Partitions: []ownership.PartitionView{{Partition: "users/0", Desired: "b", Owner: &ownership.Owner{Site: "b", Instance: "b-1", Address: "b.example:8080", Epoch: 42}}}}
}

func (f *fakeOwnership) route(database, table string, key journal.Row) (ownership.Route, error) {
	if database != "ks" || table != "users" {
		return ownership.Route{}, nil
	}
	r := ownership.Route{Partitioned: true, Partition: "users/" + key[0].Value.Str}
	switch key[0].Value.Str {
	case "alice":
		r.Owner = &ownership.Owner{Site: "b", Instance: "b-1", Address: "b.example:8080", Epoch: 42}
	case "bob":
		r.Serving, r.State, r.Epoch = true, "serving", 9
	case "carol":
		r.State = "catchup"
	}
	return r, nil
}

func (f *fakeOwnership) Admit(database, table string, key journal.Row) (ownership.Route, func() bool, error) {
	if database == "ks" && table == "users" && key[0].Value.Str == "erin" { // lost while the write is in flight
		return ownership.Route{Partitioned: true, Partition: "users/erin", Serving: true, State: "serving", Epoch: 9},
			func() bool { return false }, nil
	}
	r, err := f.route(database, table, key)
	return r, func() bool { return r.Serving || !r.Partitioned }, err
}

func (f *fakeOwnership) Move(_ context.Context, partition, site string) error {
	if partition != "users/0" {
		return fmt.Errorf("%w: no partition %q", ownership.ErrInvalid, partition)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.moves = append(f.moves, partition+">"+site)
	return nil
}

func (f *fakeOwnership) Drain(_ context.Context, site string, drained bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.moves = append(f.moves, fmt.Sprintf("drain %s %v", site, drained))
	return nil
}

func TestV1Ownership(t *testing.T) {
	e := newV1Env(t, func(c *Config) { c.Tokens = authTokens() })
	// Without a policy the view is empty and changes are refused.
	r := e.call("GET", "/v1/ownership", "", bearer(readerToken)...)
	expect(t, "view without a policy", r, 200, "")
	expect(t, "move without a policy", e.call("PUT", "/v1/ownership/moves/users/0", `{"site":"b"}`, bearer(adminToken)...), 400, "invalid_argument")

	f := &fakeOwnership{}
	e.s.deps.Ownership = f
	r = e.call("GET", "/v1/ownership", "", bearer(readerToken)...)
	expect(t, "view", r, 200, "")
	var v ownership.View
	if err := json.Unmarshal([]byte(r.body), &v); err != nil || v.Version != 7 || v.Partitions[0].Owner.Epoch != 42 {
		t.Errorf("view: %v %+v", err, v)
	}

	// Row writes: 409 naming the owner, 503 while taking over or without an owner, accepted when served.
	put := func(name string) resp {
		return e.call("PUT", "/v1/keyspaces/ks/tables/users/rows/"+name, `{"values":{"age":1}}`, bearer(writerToken)...)
	}
	r = put("alice")
	expect(t, "write at a non-owner", r, 409, "not_owner")
	var body struct {
		Partition string
		Owner     ownership.Owner
	}
	if err := json.Unmarshal([]byte(r.body), &body); err != nil || body.Partition != "users/alice" ||
		body.Owner.Site != "b" || body.Owner.Address != "b.example:8080" || body.Owner.Epoch != 42 {
		t.Errorf("not_owner body %s", r.body)
	}
	expect(t, "write while catching up", put("carol"), 503, "unavailable")
	expect(t, "write without an owner", put("dave"), 503, "unavailable")
	expect(t, "write at the owner", put("bob"), 200, "")
	expect(t, "write whose owner lost the partition meanwhile", put("erin"), 503, "unavailable")
	expect(t, "write to a table in no partition set", e.call("PUT", "/v1/keyspaces/other/tables/users/rows/x", `{"values":{"age":1}}`, bearer(adminToken)...), 200, "")
	e.st.mu.Lock()
	_, written := e.st.mu.rows["ks.users"+keyString(journal.Row{{Name: "name", Value: journal.String("alice")}})]
	_, bobWritten := e.st.mu.rows["ks.users"+keyString(journal.Row{{Name: "name", Value: journal.String("bob")}})]
	e.st.mu.Unlock()
	if written || !bobWritten {
		t.Errorf("rows written: alice (refused) %v, bob (accepted) %v", written, bobWritten)
	}

	// Moves and drains: operators only; bad input changes nothing.
	expect(t, "move by a keyspace writer", e.call("PUT", "/v1/ownership/moves/users/0", `{"site":"b"}`, bearer(writerToken)...), 403, "forbidden")
	expect(t, "move of an unknown partition", e.call("PUT", "/v1/ownership/moves/users/9", `{"site":"b"}`, bearer(adminToken)...), 400, "invalid_argument")
	expect(t, "move without a site", e.call("PUT", "/v1/ownership/moves/users/0", `{}`, bearer(adminToken)...), 400, "invalid_argument")
	expect(t, "move with an unknown field", e.call("PUT", "/v1/ownership/moves/users/0", `{"site":"b","x":1}`, bearer(adminToken)...), 400, "invalid_argument")
	expect(t, "move", e.call("PUT", "/v1/ownership/moves/users/0", `{"site":"b"}`, bearer(adminToken)...), 202, "")
	expect(t, "unmove", e.call("DELETE", "/v1/ownership/moves/users/0", "", bearer(adminToken)...), 202, "")
	expect(t, "drain", e.call("PUT", "/v1/ownership/drains/b", "", bearer(adminToken)...), 202, "")
	expect(t, "undrain", e.call("DELETE", "/v1/ownership/drains/b", "", bearer(adminToken)...), 202, "")
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := fmt.Sprint(f.moves); got != "[users/0>b users/0> drain b true drain b false]" {
		t.Errorf("changes made: %s", got)
	}
}
