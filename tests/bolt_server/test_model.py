"""Unit tests of the Memgraph model (memgraph_coordinator.py): each answer it gives per
version, as cited there. Run: python3 -m unittest discover -s tests/bolt_server -p 'test_*.py'"""

import unittest

import memgraph_coordinator as mg


def cluster(version, **extra):
    instances = [
        {"name": "coordinator_1", "bolt_server": "c1:7687", "coordinator_server": "c1:12000",
         "management_server": "c1:10000", "role": "leader"},
        {"name": "coordinator_2", "bolt_server": "c2:7687", "coordinator_server": "c2:12000",
         "management_server": "c2:10000", "role": "follower"},
        {"name": "instance_0", "bolt_server": "d0:7687", "management_server": "d0:10000",
         "replication_server": "d0:20000", "role": "main"},
        {"name": "instance_1", "bolt_server": "d1:7687", "management_server": "d1:10000",
         "replication_server": "d1:20000", "role": "replica"},
    ]
    return mg.Cluster({"version": version, "instances": instances, **extra})


def run(c, on, query, params=None):
    session = mg.Session(c, on, None)
    return session.run(query, params or {})


class Refused(unittest.TestCase):
    def assertRefused(self, c, on, query, message, params=None):
        with self.assertRaises(mg.BoltFailure) as caught:
            run(c, on, query, params)
        self.assertEqual(caught.exception.code, mg.CLIENT_ERROR)
        self.assertEqual(caught.exception.message, message)


class CoordinatorsRunOnlyCoordinatorQueries(Refused):
    def test_show_version_is_refused_on_coordinators_in_every_release(self):
        for version in ["2.22.0", "3.0.0", "3.7.2", "3.8.1", "3.9.0", "3.12.0"]:
            for query in ["SHOW VERSION", "RETURN 1 AS x", "MATCH (n) RETURN n"]:
                self.assertRefused(cluster(version), "coordinator_1", query,
                                   "Coordinator can run only coordinator queries!")

    def test_data_instances_answer_show_version_and_refuse_coordinator_queries(self):
        c = cluster("3.8.0")
        self.assertEqual(run(c, "instance_0", "SHOW VERSION")[1], [["3.8.0"]])
        self.assertRefused(c, "instance_0", "SHOW INSTANCES", "Only coordinator can run SHOW INSTANCES.")
        self.assertRefused(c, "instance_0", "UPDATE CONFIG FOR INSTANCE instance_0 {'bolt_server': 'x:1'}",
                           "Only coordinator can update config!")


class UpdateConfig(Refused):
    QUERY = "UPDATE CONFIG FOR INSTANCE instance_1 {'bolt_server': 'ext:30001'}"

    def bolt(self, c, name):
        return next(r[1] for r in c.show_instances("coordinator_1")[1] if r[0] == name)

    def test_before_3_8_the_statement_does_not_parse(self):
        for version in ["2.22.0", "3.0.0", "3.7.2"]:
            with self.assertRaises(mg.BoltFailure) as caught:
                run(cluster(version), "coordinator_1", self.QUERY)
            self.assertTrue(caught.exception.message.startswith("Error on line 1 position 1."), caught.exception.message)

    def test_3_8_leader_applies_and_follower_fails_the_raft_append(self):
        c = cluster("3.8.0")
        self.assertRefused(c, "coordinator_2", self.QUERY, "Couldn't update config because appending to Raft log failed.")
        self.assertEqual(self.bolt(c, "instance_1"), "d1:7687")
        run(c, "coordinator_1", self.QUERY)
        self.assertEqual(self.bolt(c, "instance_1"), "ext:30001")

    def test_3_9_follower_forwards_to_the_leader(self):
        c = cluster("3.9.0")
        run(c, "coordinator_2", "UPDATE CONFIG FOR COORDINATOR 1 {'bolt_server': 'ext:30000'}")
        self.assertEqual(self.bolt(c, "coordinator_1"), "ext:30000")
        c.instances["coordinator_1"]["health"] = "down"
        self.assertRefused(c, "coordinator_2", self.QUERY,
                           "Request forwarded to the leader but leader failed with request processing! Check logs "
                           "on the leader to find out what happened!")

    def test_unknown_targets_and_addresses_memgraph_cannot_parse(self):
        c = cluster("3.12.0")
        self.assertRefused(c, "coordinator_1", "UPDATE CONFIG FOR COORDINATOR 7 {'bolt_server': 'a:1'}",
                           "Couldn't update config for the coordinator 7 because it doesn't exist!")
        self.assertRefused(c, "coordinator_1", "UPDATE CONFIG FOR INSTANCE nobody {'bolt_server': 'a:1'}",
                           "Couldn't update config for the repl instance nobody because it doesn't exist!")
        for address in ["[2001:db8::7]:7687", "2001:db8::7", "no-port"]:
            self.assertRefused(c, "coordinator_1",
                               f"UPDATE CONFIG FOR INSTANCE instance_1 {{'bolt_server': '{address}'}}",
                               f"Invalid bolt socket address. {mg.SOCKET_EXPLANATION}")
        self.assertRefused(c, "coordinator_1",
                           "UPDATE CONFIG FOR INSTANCE instance_1 {'bolt_server': 'a:1', 'management_server': 'b:2'}",
                           "Config map must contain exactly 1 entry: bolt_server!")

    def test_parameters_are_values_from_3_10(self):
        query = "UPDATE CONFIG FOR INSTANCE instance_1 {'bolt_server': $address}"
        c = cluster("3.10.0")
        run(c, "coordinator_1", query, {"address": "ext:30002"})
        self.assertEqual(self.bolt(c, "instance_1"), "ext:30002")
        with self.assertRaises(mg.BoltFailure) as caught:
            run(cluster("3.9.0"), "coordinator_1", query, {"address": "ext:30002"})
        self.assertIn("The underlying parsing error is", caught.exception.message)

    def test_names_starting_with_a_digit_and_broken_quotes_are_syntax_errors(self):
        c = cluster("3.12.0")
        for query in ["UPDATE CONFIG FOR INSTANCE 1abc {'bolt_server': 'a:1'}",
                      "UPDATE CONFIG FOR INSTANCE instance_1 {'bolt_server\": 'a:1'}"]:
            with self.assertRaises(mg.BoltFailure) as caught:
                run(c, "coordinator_1", query)
            self.assertTrue(caught.exception.message.startswith("Error on line 1 position"), caught.exception.message)


class Registration(Refused):
    def test_3_0_to_3_7_remove_then_add_a_coordinator(self):
        c = cluster("3.7.2")
        add = ("ADD COORDINATOR 2 WITH CONFIG {'bolt_server': 'ext:30000', 'coordinator_server': 'c2:12000', "
               "'management_server': 'c2:10000'}")
        self.assertRefused(c, "coordinator_1", add, "Couldn't add coordinator since instance with such id already exists!")
        run(c, "coordinator_1", "REMOVE COORDINATOR 2")
        run(c, "coordinator_1", add)
        self.assertIn(["coordinator_2", "ext:30000"], [r[:2] for r in c.show_instances("coordinator_1")[1]])
        with self.assertRaises(mg.BoltFailure):
            run(cluster("2.22.0"), "coordinator_1", "REMOVE COORDINATOR 2")

    def test_a_3_8_follower_names_the_leader_when_it_refuses_a_registration(self):
        self.assertRefused(cluster("3.8.0"), "coordinator_2", "UNREGISTER INSTANCE instance_1",
                           "Couldn't unregister replica instance since coordinator is not a leader! Current leader "
                           "is coordinator with id 1 with bolt socket address c1:7687")


class RoutingTable(unittest.TestCase):
    def test_write_is_the_raft_main_read_every_other_data_instance_whatever_its_health(self):
        c = cluster("3.8.0")
        c.instances["instance_1"]["health"] = "down"
        table = c.routing_table("memgraph")
        self.assertEqual(table["db"], "memgraph")
        self.assertEqual(table["servers"], [
            {"addresses": ["d0:7687"], "role": "WRITE"},
            {"addresses": ["d1:7687"], "role": "READ"},
            {"addresses": ["c1:7687", "c2:7687"], "role": "ROUTE"},
        ])
        self.assertIsNone(c.routing_table(None)["db"])
        self.assertIsNone(cluster("3.5.2").routing_table("memgraph")["db"])

    def test_an_empty_role_is_left_out(self):
        c = cluster("3.12.0")
        c.instances["instance_1"]["registered"] = False
        roles = [s["role"] for s in c.routing_table(None)["servers"]]
        self.assertEqual(roles, ["WRITE", "ROUTE"])

    def test_show_instances_on_the_leader_marks_an_unreachable_data_instance(self):
        c = cluster("3.8.0")
        c.instances["instance_1"]["health"] = "down"
        rows = {r[0]: r for r in c.show_instances("coordinator_1")[1]}
        self.assertEqual(rows["instance_1"][4:6], ["down", "unknown"])
        self.assertEqual(rows["coordinator_1"][5], "leader")
        c.instances["coordinator_1"]["health"] = "down"
        rows = {r[0]: r for r in c.show_instances("coordinator_2")[1]}
        self.assertEqual(rows["instance_0"][4:6], ["unknown", "main"])


if __name__ == "__main__":
    unittest.main()
