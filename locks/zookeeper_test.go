package locks

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/musicd/musicd/internal/testenv"
)

func dialTest(t *testing.T) *ZooKeeper {
	t.Helper()
	cfg := DefaultZooKeeperConfig()
	cfg.Servers = []string{testenv.ZooKeeper(t)}
	cfg.SessionTimeout = 4 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	z, err := DialZooKeeper(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return z
}

// The harness test: ephemeral sequential nodes (what locks are built on) are created in order,
// listed, and removed with the session that owns them.
func TestZooKeeperSequentialEphemerals(t *testing.T) {
	z := dialTest(t)
	if err := z.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	root := "/" + testenv.UniqueName("musicd-test-")
	if _, err := z.Conn.Create(root, nil, 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	var made []string
	for range 3 {
		p, err := z.Conn.Create(root+"/lock-", []byte("holder"), zk.FlagEphemeral|zk.FlagSequence, zk.WorldACL(zk.PermAll))
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, p[len(root)+1:])
	}
	if !slices.IsSorted(made) || made[0] == made[1] {
		t.Errorf("sequential names not increasing: %v", made)
	}
	children, _, err := z.Conn.Children(root)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(children)
	if !slices.Equal(children, made) {
		t.Errorf("children %v, want %v", children, made)
	}

	// Another session sees the ephemerals vanish when the owning session closes.
	other := dialTest(t)
	defer other.Close()
	z.Close()
	testenv.WaitFor(t, 10*time.Second, "ephemeral nodes removed with their session", func() bool {
		c, _, err := other.Conn.Children(root)
		return err == nil && len(c) == 0
	})
	if err := other.Conn.Delete(root, -1); err != nil {
		t.Errorf("delete %s: %v", root, err)
	}
	if err := z.Check(context.Background()); err == nil {
		t.Error("Check passed on a closed session")
	}
}

func TestZooKeeperConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		mut  func(*ZooKeeperConfig)
		want string
	}{
		{func(c *ZooKeeperConfig) {}, ""},
		{func(c *ZooKeeperConfig) { c.Servers = nil }, "servers:"},
		{func(c *ZooKeeperConfig) { c.Servers = []string{"z:2181", "z"} }, "servers[1]:"},
		{func(c *ZooKeeperConfig) { c.SessionTimeout = time.Second }, "session_timeout:"},
		{func(c *ZooKeeperConfig) { c.Root = "/music/" }, "root:"},
	} {
		c := DefaultZooKeeperConfig()
		c.Servers = []string{"127.0.0.1:2181"}
		tc.mut(&c)
		err := c.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.HasPrefix(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want prefix %q", c, err, tc.want)
		}
	}
}
