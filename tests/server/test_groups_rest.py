"""The group REST API over real HTTP, against a real server: changes, error codes, durability,
and what the call core sees of them; on both record back ends (the ``db`` fixture)."""

from __future__ import annotations

from callwire.codes import ErrorCode
from signaling_server.groups import MAX_GROUP_MEMBERS
from tests.helpers.rest import rest
from tests.helpers.servers import new_server
from tests.helpers.wsclient import WsClient


async def test_create_add_remove_list_destroy(db: str) -> None:
    """A group's life through the API; every answer has the documented fields, the member
    list keeps the order of addition, and the core's directory follows every change."""
    async with new_server(db=db, http_port=0) as server:
        created = await rest(server, "group/create_group",
                             {"groupId": "team", "name": "Team", "memberList": ["alice", "bob"]})
        assert created["groupId"] == "team" and created["name"] == "Team"
        assert created["memberNum"] == 2 and created["createdTs"] > 0
        added = await rest(server, "group/add_group_member",
                           {"groupId": "team", "memberList": ["carol", "alice", "dave"]})
        assert added == {"groupId": "team", "added": ["carol", "dave"],
                         "alreadyMembers": ["alice"], "memberNum": 4}
        assert server.groups.is_member("team", "dave")
        removed = await rest(server, "group/delete_group_member",
                             {"groupId": "team", "memberList": ["dave", "erin"]})
        assert removed == {"groupId": "team", "removed": ["dave"], "notMembers": ["erin"],
                           "memberNum": 3}
        assert not server.groups.is_member("team", "dave")
        page = await rest(server, "group/get_group_member_info",
                          {"groupId": "team", "limit": 2})
        assert [m["userId"] for m in page["memberList"]] == ["alice", "bob"]
        assert page["memberNum"] == 3 and page["nextOffset"] == 2
        rest_page = await rest(server, "group/get_group_member_info",
                               {"groupId": "team", "limit": 2, "offset": 2})
        assert [m["userId"] for m in rest_page["memberList"]] == ["carol"]
        assert rest_page["nextOffset"] == 0
        assert await rest(server, "group/destroy_group", {"groupId": "team"}) == {
            "groupId": "team"}
        assert not server.groups.exists("team")
        await rest(server, "group/get_group_member_info", {"groupId": "team"},
                   expect=ErrorCode.GROUP_NOT_FOUND)


async def test_error_codes(db: str) -> None:
    """10021 for a used id, 10010 for a group that does not exist, 10014 past the member cap,
    70001 for invalid fields; a refused change changes nothing."""
    async with new_server(db=db, http_port=0) as server:
        await rest(server, "group/create_group", {"groupId": "team"})
        await rest(server, "group/create_group", {"groupId": "team"},
                   expect=ErrorCode.GROUP_ID_USED)
        for command in ("destroy_group", "get_group_member_info"):
            await rest(server, f"group/{command}", {"groupId": "nope"},
                       expect=ErrorCode.GROUP_NOT_FOUND)
        for command in ("add_group_member", "delete_group_member"):
            await rest(server, f"group/{command}", {"groupId": "nope", "memberList": ["a"]},
                       expect=ErrorCode.GROUP_NOT_FOUND)
        many = [f"user{i}" for i in range(MAX_GROUP_MEMBERS + 1)]
        await rest(server, "group/create_group", {"groupId": "big", "memberList": many[:400]})
        await rest(server, "group/add_group_member",
                   {"groupId": "big", "memberList": many[400:900]})
        await rest(server, "group/add_group_member",
                   {"groupId": "big", "memberList": many[900:]}, expect=ErrorCode.GROUP_FULL)
        big = await rest(server, "group/get_group_member_info", {"groupId": "big"})
        assert big["memberNum"] == 900
        invalid = ErrorCode.REST_INVALID_PARAMETERS
        for body in ({}, {"groupId": ""}, {"groupId": 7}, {"groupId": "x", "color": "red"},
                     {"groupId": "x", "memberList": ["bad id!"]},
                     {"groupId": "x", "memberList": "alice"}, {"groupId": "x", "name": 3}):
            await rest(server, "group/create_group", body, expect=invalid)
        await rest(server, "group/add_group_member", {"groupId": "team", "memberList": []},
                   expect=invalid)
        await rest(server, "group/get_group_member_info", {"groupId": "team", "limit": 0},
                   expect=invalid)
        assert not server.groups.exists("x")


async def test_groups_survive_a_restart(db: str) -> None:
    """Groups and members are in the records database: a restarted server has them, and its
    core lets a member see the group's calls while refusing others."""
    async with new_server(db=db, http_port=0) as server:
        await rest(server, "group/create_group", {"groupId": "team", "memberList": ["alice"]})
        await rest(server, "group/add_group_member", {"groupId": "team", "memberList": ["bob"]})
        await rest(server, "group/delete_group_member", {"groupId": "team",
                                                         "memberList": ["alice"]})
    async with new_server(db=db, http_port=0) as server:
        page = await rest(server, "group/get_group_member_info", {"groupId": "team"})
        assert [m["userId"] for m in page["memberList"]] == ["bob"]
        async with await WsClient.connect(server.url) as bob, \
                await WsClient.connect(server.url) as alice:
            await bob.login("bob")
            await alice.login("alice")
            assert await bob.call("get_group_call", {"groupId": "team"}) == {
                "groupId": "team", "call": None}
            reply = await alice.request("get_group_call", {"groupId": "team"})
            assert not reply.ok and reply.code == ErrorCode.PERMISSION_DENIED
