// Package ownership runs the ownership policy (policies.Ownership, the prom recipe) across the
// musicd instances of every site: who is alive, which site should own each partition, which
// instance does own it, and the transfer in which a new owner catches up before it serves.
//
// Every musicd runs a Node. A Node:
//   - keeps its site present: a read reference on the site's lock ("site.<site>"), which lives
//     as long as its ZooKeeper session (locks.Service);
//   - campaigns for the controller ("ownership.controller"): the one controller of the
//     deployment watches every site's presence, counts a site lost once none of its instances
//     has been present for the policy's failover grace, computes the desired map
//     (policies.Ownership.Assign over the live sites, with the moves and drains in force) and
//     appends every change of it to the journal stream "ownership/map" under its election epoch
//     (so a deposed controller cannot write);
//   - follows that map: for each partition the map gives its site it campaigns for the
//     partition's election ("partition.<id>"). The winner fences the partition's stream
//     ("prom/<id>") with its epoch, records the transfer there, calls the transfer's CatchUp
//     (the daemon waits until its appliers have applied the other sites' streams up to their
//     heads read now), and only then serves. When the map moves the partition away it stops
//     serving, drains, and resigns, so that the next site's candidate is granted cleanly; when
//     its leadership is lost (its ZooKeeper session ended) it stops serving at once and reports
//     nothing it cannot prove;
//   - observes every partition's election, so that any instance can name the current owner
//     (site, instance, address, epoch) of any partition: the REST API answers 409 with it.
//
// Manual moves and drains from the REST API are validated against the whole policy and appended
// to "ownership/policy" under the write lock "ownership.policy"; the controller applies them.
// docs/ownership.md describes the model and its limits.
package ownership
