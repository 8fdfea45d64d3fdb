package feeds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/locks"
)

// RelayElection is the election whose leader relays stream: "relay." and the stream id with its
// slashes as dots, and bytes that lock names do not allow (dots and '=' included, so that two
// streams never share an election) as '=' and two hex digits; a name that would be too long
// becomes "relay.h." and a hash of the stream id.
func RelayElection(stream string) string {
	var b strings.Builder
	b.WriteString("relay.")
	for i := 0; i < len(stream); i++ {
		switch c := stream[i]; {
		case c == '/':
			b.WriteByte('.')
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == ':', c == '@', c == '+', c == '-':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	if b.Len() > locks.MaxNameLen {
		sum := sha256.Sum256([]byte(stream))
		return "relay.h." + hex.EncodeToString(sum[:16])
	}
	return b.String()
}

// RunOwnedElected relays stream from this instance while it leads the stream's relay election
// (RelayElection) among the instances that share the lock service, so that one relay publishes
// the stream: it owns the stream while leading and disowns it when the leadership ends. It
// returns nil when ctx ends, or an error at once for an invalid stream id.
func (r *Relay) RunOwnedElected(ctx context.Context, c locks.Campaigner, stream, candidate string) error {
	if err := journal.ValidateStreamID(stream); err != nil {
		return err
	}
	return locks.RunElected(ctx, c, RelayElection(stream), candidate, r.logger, func(ctx context.Context, _ uint64) error {
		_ = r.Own(stream) // valid: checked above
		<-ctx.Done()
		r.Disown(stream)
		return nil
	})
}
