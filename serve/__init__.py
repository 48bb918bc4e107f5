"""The commands that put the layers together: ``xb-broker`` (broker, REST facade and a
local worker in one command) and ``xb`` (the client's commands and the dashboard).

Every other package sits in a layer and imports only those below it; this one is above
them all.
"""
