"""Typed application keys (aiohttp AppKey), all in one place."""

from __future__ import annotations

from aiohttp import web

from .state import GatewayState

STATE = web.AppKey("STATE", GatewayState)
