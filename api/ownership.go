package api

import (
	"context"
	"fmt"
	"net/http"

	"github.com/musicd/musicd/journal"
	"github.com/musicd/musicd/ownership"
)

// Ownership is what the API needs from the ownership runtime (*ownership.Node): the view served
// at /v1/ownership, manual moves and drains, and the admission of a row write (a non-owner
// answers 409 not_owner with the owner).
type Ownership interface {
	View() ownership.View
	// Admit says where a write about to be made goes (see ownership.Node.Admit).
	Admit(database, table string, key journal.Row) (ownership.Route, func() bool, error)
	Move(ctx context.Context, partition, site string) error
	Drain(ctx context.Context, site string, drained bool) error
}

// ownershipRoutes are the routes of the ownership map. Reading needs any valid token; changing
// needs one that may write every keyspace (an operator's).
func (s *Server) ownershipRoutes() []v1Route {
	return []v1Route{
		{pattern: "GET /v1/ownership", h: s.getOwnership, stateless: true},
		{pattern: "PUT /v1/ownership/moves/{partition...}", h: s.putMove, stateless: true},
		{pattern: "DELETE /v1/ownership/moves/{partition...}", h: s.deleteMove, stateless: true},
		{pattern: "PUT /v1/ownership/drains/{site}", h: s.drainSite(true), stateless: true},
		{pattern: "DELETE /v1/ownership/drains/{site}", h: s.drainSite(false), stateless: true},
	}
}

func (s *Server) getOwnership(w http.ResponseWriter, r *http.Request, c *call) error {
	if s.deps.Ownership == nil {
		writeJSON(w, http.StatusOK, ownership.View{Site: s.deps.Build.Site, Live: []string{}, Sites: []string{},
			Partitions: []ownership.PartitionView{}})
		return nil
	}
	writeJSON(w, http.StatusOK, s.deps.Ownership.View())
	return nil
}

// changeOwnership authorizes an operator's change and runs it.
func (s *Server) changeOwnership(w http.ResponseWriter, r *http.Request, c *call, fn func(ctx context.Context) error) error {
	if !c.p.all || !c.p.write {
		return &apiError{status: http.StatusForbidden, code: codeForbidden,
			msg: "changing ownership needs a token that may write every keyspace"}
	}
	if s.deps.Ownership == nil {
		return invalid("no ownership policy is configured (ownership.partitions)")
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
	defer cancel()
	if err := fn(ctx); err != nil {
		return err
	}
	// Accepted: the controller applies the change and the owners move in the background.
	writeJSON(w, http.StatusAccepted, s.deps.Ownership.View())
	return nil
}

type moveRequest struct {
	Site string `json:"site"`
}

func (s *Server) putMove(w http.ResponseWriter, r *http.Request, c *call) error {
	var body moveRequest
	if err := s.decodeBody(w, r, &body, true); err != nil {
		return err
	}
	if body.Site == "" {
		return invalid(`the body needs "site": the site the partition moves to`)
	}
	return s.changeOwnership(w, r, c, func(ctx context.Context) error {
		return s.deps.Ownership.Move(ctx, r.PathValue("partition"), body.Site)
	})
}

func (s *Server) deleteMove(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.changeOwnership(w, r, c, func(ctx context.Context) error {
		return s.deps.Ownership.Move(ctx, r.PathValue("partition"), "")
	})
}

func (s *Server) drainSite(drained bool) v1Handler {
	return func(w http.ResponseWriter, r *http.Request, c *call) error {
		return s.changeOwnership(w, r, c, func(ctx context.Context) error {
			return s.deps.Ownership.Drain(ctx, r.PathValue("site"), drained)
		})
	}
}

// admitWrite admits a row write at this instance: 409 not_owner naming the owner, or 503 while
// the partition has no owner or this instance is taking it over, handing it over, or cannot
// confirm its ZooKeeper session. On success, done must be called with the write's error once it
// was made: it ends the write's time in flight (a planned move waits for it) and turns a success
// into 503 when this instance lost the partition meanwhile (the write may have landed after
// another owner took over; it is not acknowledged as the owner's).
func (s *Server) admitWrite(keyspace, table string, key journal.Row) (done func(error) error, err error) {
	if s.deps.Ownership == nil {
		return func(err error) error { return err }, nil
	}
	rt, still, err := s.deps.Ownership.Admit(keyspace, table, key)
	if err != nil {
		return nil, invalid("%v", err)
	}
	switch {
	case !rt.Partitioned:
		return func(err error) error { return err }, nil
	case rt.Serving:
		return func(err error) error {
			if !still() && err == nil {
				return &apiError{status: http.StatusServiceUnavailable, code: codeUnavailable,
					msg: fmt.Sprintf("this instance lost partition %s while the write was in flight: it may or may not have been applied; read it back, or retry at the owner", rt.Partition)}
			}
			return err
		}, nil
	case rt.State != "":
		return nil, &apiError{status: http.StatusServiceUnavailable, code: codeUnavailable,
			msg: fmt.Sprintf("this instance cannot serve partition %s now (%s: taking it over, handing it over, or its ZooKeeper session unconfirmed); retry shortly", rt.Partition, rt.State)}
	case rt.Owner == nil:
		return nil, &apiError{status: http.StatusServiceUnavailable, code: codeUnavailable,
			msg: fmt.Sprintf("partition %s has no owner this instance can vouch for now (a failover or a move is in progress, or its ZooKeeper session is unconfirmed); retry shortly", rt.Partition)}
	}
	return nil, &apiError{status: http.StatusConflict, code: codeNotOwner, partition: rt.Partition, owner: rt.Owner,
		msg: fmt.Sprintf("partition %s is owned by site %s (%s)", rt.Partition, rt.Owner.Site, rt.Owner.Address)}
}
