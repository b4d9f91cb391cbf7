"""odenets"""
