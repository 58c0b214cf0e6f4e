"""The query workflow's steps (stepfunctions/query.asl.json): carrier check and reply.

The fan-out between them (AskCompanies) is partners/lookups.py: it is the partner protocol's.
"""
