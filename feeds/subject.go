package feeds

import (
	"errors"
	"strings"

	"github.com/musicd/musicd/journal"
)

// Subjects of the change feed, below the configured prefix P (default "music"):
//
//	P.changes.<database>.<table>.<op>   every journal entry (op: insert, update, delete, ddl, put, mark)
//	P.ownership.<partition>             ownership changes (published by the ownership policy)
//	P.conflicts.<database>.<table>      conflicts met by appliers
//
// Every variable token is escaped with EscapeToken, so that one name is always one token.

// EscapeToken turns a name (database, keyspace, table, partition) into one NATS subject token.
// Bytes other than ASCII letters, digits, '_' and '-' become '%' and two upper-case hex digits
// (so '.', '*', '>', whitespace, '$' and '%' itself never appear raw); the empty name becomes
// "%" alone. The mapping is one-to-one: UnescapeToken reverses it.
func EscapeToken(name string) string {
	if name == "" {
		return "%"
	}
	clean := true
	for i := 0; i < len(name); i++ {
		if !plainByte(name[i]) {
			clean = false
			break
		}
	}
	if clean {
		return name
	}
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(name) + 8)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if plainByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0xf])
	}
	return b.String()
}

func plainByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// errBadToken is returned by UnescapeToken for text EscapeToken never produces.
var errBadToken = errors.New("feeds: not an escaped subject token")

// UnescapeToken reverses EscapeToken.
func UnescapeToken(token string) (string, error) {
	if token == "%" {
		return "", nil
	}
	if token == "" {
		return "", errBadToken
	}
	out := make([]byte, 0, len(token))
	for i := 0; i < len(token); i++ {
		c := token[i]
		if plainByte(c) {
			out = append(out, c)
			continue
		}
		if c != '%' || i+2 >= len(token) {
			return "", errBadToken
		}
		hi, ok1 := unhex(token[i+1])
		lo, ok2 := unhex(token[i+2])
		if !ok1 || !ok2 || plainByte(hi<<4|lo) {
			return "", errBadToken
		}
		out = append(out, hi<<4|lo)
		i += 2
	}
	return string(out), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// Subjects builds the subjects of one prefix.
type Subjects struct{ Prefix string }

// Changes is the subject of an entry: P.changes.<database>.<table>.<op>.
func (s Subjects) Changes(database, table string, op journal.Op) string {
	return s.Prefix + ".changes." + EscapeToken(database) + "." + EscapeToken(table) + "." + op.String()
}

// ChangesAll is the wildcard that matches every entry.
func (s Subjects) ChangesAll() string { return s.Prefix + ".changes.>" }

// Ownership is the subject of an ownership change of partition.
func (s Subjects) Ownership(partition string) string {
	return s.Prefix + ".ownership." + EscapeToken(partition)
}

// OwnershipMap is the subject of a new ownership map: the partition token "%", which no
// partition's name escapes to.
func (s Subjects) OwnershipMap() string { return s.Ownership("") }

// OwnershipAll is the wildcard that matches every ownership announcement.
func (s Subjects) OwnershipAll() string { return s.Prefix + ".ownership.>" }

// Conflicts is the subject of a conflict in database.table.
func (s Subjects) Conflicts(database, table string) string {
	return s.Prefix + ".conflicts." + EscapeToken(database) + "." + EscapeToken(table)
}

// Queue is the subject of the notices that a job of a work queue is due (core NATS only: a
// notice is a wake-up, not a record).
func (s Subjects) Queue(namespace, name string) string {
	return s.Prefix + ".queue." + EscapeToken(namespace) + "." + EscapeToken(name)
}

// QueueAll is the wildcard that matches every queue's notices.
func (s Subjects) QueueAll() string { return s.Prefix + ".queue.>" }

// streamSubjects are the subjects the JetStream stream captures.
func (s Subjects) streamSubjects() []string {
	return []string{s.Prefix + ".changes.>", s.Prefix + ".ownership.>", s.Prefix + ".conflicts.>"}
}
